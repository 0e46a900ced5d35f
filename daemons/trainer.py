"""cappuccino-train@<study>.service: one training worker for a study.

The instance name is `<study>` or `<study>:<k>` (k numbers several workers on one host).
READY=1 once data and study are loaded; WATCHDOG=1 and STATUS= from inside the training loop
(every PPO update), so a hung trial is caught; SIGTERM stops within one update and the trial
in progress ends as FAIL with its parameters queued again: no trial is left RUNNING.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from cappuccino_core.common.service import (
    Notifier,
    run_daemon,
    start_daemon,
    wait_for_storage,
)
from cappuccino_core.common.threads import set_torch_threads
from cappuccino_core.training.worker import WorkerHooks, run_worker

log = logging.getLogger("cappuccino.trainer")


def study_of(instance: str) -> str:
    return instance.split(":", 1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instance", help="<study> or <study>:<k>")
    args, cfg = start_daemon(parser, argv)
    # several workers on one host share its cores instead of fighting for them
    set_torch_threads(cfg.training.workers_per_host, "trainer")
    notifier = Notifier()
    hooks = WorkerHooks(status=notifier.status, ping=notifier.watchdog, ready=notifier.ready)

    def on_signal(signum, _frame):
        log.info("signal %d: finishing the current PPO update, then stopping", signum)
        notifier.stopping()
        hooks.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    study = study_of(args.instance)
    notifier.status(f"{study}: loading data")
    # a storage outage pauses the worker (said once, retried with backoff) instead of
    # crashing it through its start limit
    n = wait_for_storage(lambda: run_worker(cfg, study, hooks), notifier)
    log.info("worker %s stopped after %d trial(s)", args.instance, n)
    return 0


if __name__ == "__main__":
    sys.exit(run_daemon(main))
