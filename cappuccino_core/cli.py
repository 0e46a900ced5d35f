"""The `cappuccino` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import pandas as pd
import yaml

from . import __version__
from .config import ConfigError, effective_config, load_config
from .data.bars import DataError
from .service import setup_logging

log = logging.getLogger("cappuccino")


def cmd_config_check(args) -> int:
    cfg = load_config(args.config_dir)
    effective = effective_config(cfg)
    if args.json:
        print(json.dumps(effective, indent=2))
    else:
        print(f"# effective configuration from {cfg.config_dir} (secrets masked)")
        print(yaml.safe_dump(effective, sort_keys=False), end="")
    return 0


def cmd_data_fetch(args) -> int:
    from .data import fetch_into_cache, make_cache, make_source, to_utc

    cfg = load_config(args.config_dir)
    symbols = args.symbols or cfg.data.symbols
    now = pd.Timestamp.now(tz="UTC")
    start = to_utc(args.start, to_utc(cfg.data.start, now - pd.Timedelta(days=365)))
    end = to_utc(args.end, now)
    cache = make_cache(cfg, make_source(cfg, args.source, args.path))
    added = fetch_into_cache(cache, symbols, start, end, now, progress=sys.stderr.isatty()
                             or args.progress)
    print(f"{'symbol':<10} {'new bars':>9} {'cached':>7}  first                      last")
    for s in symbols:
        df = cache.read(s, start, end, now)
        span = f"{df.index[0]}  {df.index[-1]}" if len(df) else "(none in range)"
        print(f"{s:<10} {added[s]:>9} {len(df):>7}  {span}")
    print(f"cache: {cache.dir}")
    return 0


CONFIG_DIR_HELP = ("directory holding cappuccino.yaml and active_study.yaml "
                   "(default: $CAPPUCCINO_CONFIG_DIR or /etc/cappuccino)")


def cmd_train(args) -> int:
    if args.action:
        print(f"`cappuccino train {args.action}` manages the systemd units; not available yet",
              file=sys.stderr)
        return 2
    from .training.foreground import train_foreground
    cfg = load_config(args.config_dir)
    return train_foreground(cfg, args.study or cfg.active_study, args.n_trials, args.workers)


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.workdir)


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts after its name too (`cappuccino config check --config-dir`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config-dir", default=argparse.SUPPRESS, help=CONFIG_DIR_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="cappuccino",
        description="Cappuccino: deep-RL crypto trading that runs itself under systemd.")
    parser.add_argument("--version", action="version", version=f"cappuccino {__version__}")
    parser.add_argument("--config-dir", help=CONFIG_DIR_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = sub.add_parser("config", help="inspect and check the configuration",
                            description="Inspect and check the configuration files.")
    config_sub = config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    check = config_sub.add_parser(
        "check", parents=[common], help="validate the configuration and print the effective values",
        description="Validate cappuccino.yaml and active_study.yaml; print the effective "
                    "configuration with secrets masked (exit 0) or the error (exit 2).")
    check.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    check.set_defaults(func=cmd_config_check)

    data = sub.add_parser("data", help="market data: fill and inspect the bar cache",
                          description="Market data: fill and inspect the bar cache.")
    data_sub = data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    fetch = data_sub.add_parser(
        "fetch", parents=[common], help="fetch closed bars into the cache (only what it lacks)",
        description="Fetch closed bars from a source into the cache under the state dir. "
                    "Only ranges the cache does not hold yet are requested.")
    fetch.add_argument("--symbols", nargs="+", help="symbols like BTC/USD (default: config)")
    fetch.add_argument("--start", help="first bar, UTC (default: data.start or a year ago)")
    fetch.add_argument("--end", help="end, exclusive, UTC (default: now)")
    fetch.add_argument("--source", choices=["alpaca", "csv"], help="default: data.source")
    fetch.add_argument("--path", help="CSV directory for --source csv (default: data.csv_path "
                       "or the bundled sample)")
    fetch.add_argument("--progress", action="store_true",
                       help="show the progress bar even when stderr is not a terminal")
    fetch.set_defaults(func=cmd_data_fetch)

    train = sub.add_parser(
        "train", parents=[common], help="run training workers for a study in the foreground",
        description="Run W training workers for a study in the foreground, with a progress bar, "
                    "until the study has N finished trials. The target is stored in the study, "
                    "so every worker (also under systemd, on any host) stops there.")
    train.add_argument("action", nargs="?", choices=["start", "stop"],
                       help="(systemd) start or stop cappuccino-train@STUDY units instead")
    train.add_argument("--study", help="study name (default: the active study)")
    train.add_argument("--n-trials", type=int, help="target number of finished trials")
    train.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser(
        "demo", help="run the pipeline on the embedded defaults in a temporary state dir",
        description="Run the pipeline end to end on the embedded defaults (SQLite, bundled "
                    "sample data, simulated broker) in a temporary directory; no network needed.")
    demo.add_argument("--workdir", help="directory for the demo's config and state "
                      "(default: a new temporary directory)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
