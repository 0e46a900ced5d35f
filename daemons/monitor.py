"""cappuccino-monitor.service: one run of the monitor (its timer: every 5 minutes).

The checks and one alert per new incident (and one when it is resolved), the Prometheus
metrics file, the daily summary when due: `operations.monitor.run_monitor`. Exit 0, or 1 when
the checks could not run (the metrics then say health critical, with the reason).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cappuccino_core.common.service import run_daemon, start_daemon
from cappuccino_core.operations.monitor import run_monitor

log = logging.getLogger("cappuccino.monitor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _, cfg = start_daemon(parser, argv)
    return run_monitor(cfg, say=log.info)


if __name__ == "__main__":
    sys.exit(run_daemon(main))
