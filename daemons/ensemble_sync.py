"""cappuccino-ensemble-sync.service: one sync of the ensemble with the active study.

Run by its timer every 10 minutes and by cappuccino-active-study.path as soon as
active_study.yaml changes. Exit 0 when published, unchanged, or too few members yet (the
current ensemble keeps trading); exit 1 when the study is unknown or has no eligible trial.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cappuccino_core.common.service import run_daemon, start_daemon
from cappuccino_core.common.threads import set_torch_threads
from cappuccino_core.ensemble import sync, sync_following
from cappuccino_core.ensemble.selection import SelectionError
from cappuccino_core.storage.database import app_engine

log = logging.getLogger("cappuccino.ensemble_sync")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="override the active study (testing)")
    args, cfg = start_daemon(parser, argv)
    set_torch_threads(1, "ensemble sync")  # small models: one core, never a worker's
    try:
        engine = app_engine(cfg)
        result = sync(cfg, engine, args.study) if args.study else sync_following(cfg, engine)
    except SelectionError as e:
        log.error("ensemble sync: %s; the current ensemble is untouched", e)
        return 1
    for trial_id, number, why in result.selection.skipped:
        log.info("skipped trial %d (id %d): %s", number, trial_id, why)
    log.info("%s", result.message)
    return 0


if __name__ == "__main__":
    sys.exit(run_daemon(main))
