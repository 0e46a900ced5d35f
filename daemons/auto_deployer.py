"""cappuccino-auto-deployer.service (hourly timer): validate the active study's best trial
out of sample, record the decision, and promote it (a new ensemble version, the trader
reloads) only if it passes every gate. See cappuccino_core/operations/deploy.py."""

from __future__ import annotations

import argparse
import logging
import sys

from cappuccino_core.common.service import run_daemon, start_daemon
from cappuccino_core.common.threads import set_torch_threads
from cappuccino_core.ensemble.selection import SelectionError
from cappuccino_core.operations import deploy
from cappuccino_core.storage.database import app_engine

log = logging.getLogger("cappuccino.auto_deployer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="default: the active study")
    args, cfg = start_daemon(parser, argv)
    set_torch_threads(1, "auto-deployer")  # small models: one core, never a worker's
    try:
        decision, published = deploy.run(cfg, app_engine(cfg), args.study)
    except SelectionError as e:
        log.error("deploy: %s", e)
        return 1
    if published:
        log.info("%s", published)
    return 0  # the decision itself is logged and recorded by deploy.record


if __name__ == "__main__":
    sys.exit(run_daemon(main))
