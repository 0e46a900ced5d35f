"""The `cappuccino` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

import numpy as np
import pandas as pd
import yaml

from . import __version__
from .common.config import ConfigError, effective_config, load_config
from .common.service import setup_logging

log = logging.getLogger("cappuccino")


def cmd_config_check(args) -> int:
    from .common.alerts import url_problems
    from .common.config import ConfigErrors, path_problems
    cfg = load_config(args.config_dir)
    problems = path_problems(cfg) + url_problems(cfg)
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
    effective = effective_config(cfg)
    if args.json:
        print(json.dumps(effective, indent=2))
    else:
        read = ", ".join(cfg.files_read) or "none (no file there: every value is the default)"
        print(f"# configuration directory {cfg.config_dir}; files read: {read}")
        print("# the effective configuration (secrets masked):")
        print(yaml.safe_dump(effective, sort_keys=False), end="")
    from .ensemble.manifest import venue_warnings
    for warning in venue_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_data_fetch(args) -> int:
    from .data import fetch_into_cache, make_cache, make_source, to_utc

    cfg = load_config(args.config_dir)
    symbols = args.symbols or cfg.data.symbols
    now = pd.Timestamp.now(tz="UTC")
    start = to_utc(args.start, to_utc(cfg.data.start, now - pd.Timedelta(days=365)))
    end = to_utc(args.end, now)
    if start >= end:
        raise ConfigError("command line", "--start", args.start or cfg.data.start,
                          f"a time before the end ({end})")
    if len(set(symbols)) != len(symbols):
        raise ConfigError("command line", "--symbols", ",".join(symbols),
                          "each symbol once")
    follow = _fetch_follows(cfg, args)  # refused here, before any work, if it cannot be written
    cache = make_cache(cfg, make_source(cfg, args.source, args.path))
    added = fetch_into_cache(cache, symbols, start, end, now, progress=sys.stderr.isatty()
                             or args.progress)
    print(f"{'symbol':<10} {'new bars':>9} {'cached':>7}  first                      last")
    for s in symbols:
        df = cache.read(s, start, end, now)
        span = f"{df.index[0]}  {df.index[-1]}" if len(df) else "(none in range)"
        print(f"{s:<10} {added[s]:>9} {len(df):>7}  {span}")
    print(f"cache: {cache.dir}")
    if follow:
        from .common.config import set_config_values
        path = set_config_values(cfg.config_dir, "data", follow)
        print(f"{path}: " + ", ".join(f"data.{k}: {v}" for k, v in follow.items())
              + " (training and trading now read what was fetched)")
    return 0


def _fetch_follows(cfg, args) -> dict:
    """What a fetch from another source or directory than the configured one writes into the
    configuration (training and trading then read what was just fetched, never silently the
    bundled sample or an older source), checked writable before the fetch."""
    from pathlib import Path

    from .common.config import check_rewritable
    wanted = {}
    if args.source and args.source != cfg.data.source:
        wanted["source"] = args.source
    if args.path and (cfg.data.csv_path is None
                      or Path(args.path).resolve() != Path(cfg.data.csv_path).resolve()):
        wanted["csv_path"] = str(Path(args.path).resolve())
    if wanted:
        check_rewritable(cfg.config_dir, "data")
    return wanted


TRADER_HELP = "trader name (default: 'paper' if it has traded, else the most recently active)"
WINDOW_FROM_HELP = ("first decision at the first bar opening at or after this UTC time "
                    "(default: the active study's held-out window)")
WINDOW_TO_HELP = "end, exclusive: the last bar lived through opens before it (default: the data's end)"
CONFIG_DIR_HELP = ("directory holding cappuccino.yaml and active_study.yaml "
                   "(default: $CAPPUCCINO_CONFIG_DIR or /etc/cappuccino)")


def cmd_train(args) -> int:
    cfg = load_config(args.config_dir)
    if args.action:
        from .training.systemd import train_start, train_stop
        study = args.study or cfg.active_study
        if args.action == "start":
            return train_start(cfg, study, args.workers, args.n_trials, args.activate)
        return train_stop(study)
    from .training.foreground import train_foreground
    return train_foreground(cfg, args.study or cfg.active_study, args.n_trials, args.workers)


def _app_db(cfg):
    """The database for a command that writes (created and migrated if need be)."""
    from .storage.database import app_engine
    return app_engine(cfg)


def _read_db(cfg):
    """The database for a command that only reads: never created nor migrated by it."""
    from .storage.database import read_engine
    return read_engine(cfg)


def cmd_ensemble_sync(args) -> int:
    from .ensemble import sync
    from .ensemble.selection import SelectionError
    cfg = load_config(args.config_dir)
    try:
        result = sync(cfg, _app_db(cfg), args.study)
    except SelectionError as e:
        log.error("ensemble sync: %s; the current ensemble is untouched", e)
        return 1
    for trial_id, number, why in result.selection.skipped:
        print(f"skipped trial {number} (id {trial_id}): {why}")
    print(result.message)
    return 0


def _emit(args, data, render) -> None:
    """`data` as JSON with --json (its shape is in docs/schemas/), else as `render` writes it."""
    print(json.dumps(data, indent=2, default=_plain) if getattr(args, "json", False)
          else render(data))


def _plain(value):
    """numpy numbers as numbers, anything else JSON cannot hold as text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def cmd_ensemble_show(args) -> int:
    from .ensemble.show import current_ensemble, render
    cfg = load_config(args.config_dir)
    ensemble = current_ensemble(cfg)
    if ensemble is None:
        print("no ensemble published yet (cappuccino ensemble sync)", file=sys.stderr)
        return 1
    _emit(args, ensemble, render)
    return 1 if ensemble["broken"] else 0  # a script sees a broken version as a failure


def cmd_study_list(args) -> int:
    from .operations.dashboard import dashboard_command, how_to_browse
    from .storage.optuna_db import study_summaries
    cfg = load_config(args.config_dir)
    rows = study_summaries(_read_db(cfg))
    _emit(args, {"active_study": cfg.active_study, "dashboard": dashboard_command(cfg),
                 "browse": how_to_browse(cfg), "artifact_store": cfg.artifacts.store,
                 "studies": [{"name": name, "active": name == cfg.active_study, **r}
                             for name, r in sorted(rows.items())]}, _render_study_list)
    return 0


def _render_study_list(d: dict) -> str:
    lines = [f"{'study':<24}{'complete':>9}{'running':>8}{'failed':>7}{'pruned':>7}{'best':>9}"]
    for r in d["studies"]:
        best = f"{r['best']:.3f}" if r["best"] is not None else "-"
        c = r["counts"]
        lines.append(f"{r['name'] + (' *' if r['active'] else ''):<24}{c['COMPLETE']:>9}"
                     f"{c['RUNNING']:>8}{c['FAIL']:>7}{c['PRUNED']:>7}{best:>9}")
    return "\n".join(lines + ["* the active study", "", *d["browse"]])


def cmd_dashboard(args) -> int:
    from .operations.dashboard import serve
    serve(load_config(args.config_dir), args.host, args.port)
    return 0


def cmd_artifacts_migrate(args) -> int:
    from .artifacts.store import migrate_local
    from .storage.optuna_db import ATTR_ARTIFACT_DIR, complete_trials_with_attr
    cfg = load_config(args.config_dir)
    engine = _app_db(cfg)
    local = [(t, study, d) for t, study, d in complete_trials_with_attr(engine, ATTR_ARTIFACT_DIR)
             if args.study is None or study == args.study]
    counts = migrate_local(cfg, engine, local)
    print(f"{counts['imported']} imported into the {cfg.artifacts.store} store, "
          f"{counts['already']} already there, {counts['missing']} missing on this host, "
          f"{counts['damaged']} damaged (not imported)")
    return 1 if counts["damaged"] else 0


def cmd_study_activate(args) -> int:
    from .common.config import write_active_study
    from .storage.optuna_db import study_exists
    cfg = load_config(args.config_dir)
    if not study_exists(_read_db(cfg), args.name):
        print(f"study {args.name!r} does not exist in {cfg.storage_url.split('@')[-1]}",
              file=sys.stderr)
        return 1
    path = write_active_study(cfg.config_dir, args.name)
    print(f"active study is now {args.name} ({path}); the ensemble sync follows it")
    return 0


def cmd_study_delete(args) -> int:
    from .operations.studies import StudyRefused, delete_study
    cfg = load_config(args.config_dir)
    if not args.yes:
        print(f"study delete: deleting {args.name!r} removes its trials and models for good; "
              "add --yes to confirm", file=sys.stderr)
        return 2
    try:
        removed = delete_study(cfg, _app_db(cfg), args.name)
    except StudyRefused as e:
        print(f"study delete: {e}", file=sys.stderr)
        return 1
    print(f"deleted study {args.name}: {removed['trials']} trial(s), {removed['models']} "
          "model(s) in the artifact store")
    return 0


def cmd_study_import(args) -> int:
    from .operations.studies import import_studies
    cfg = load_config(args.config_dir)
    copied = import_studies(cfg, args.source, args.study)
    print(f"imported {len(copied)} stud{'y' if len(copied) == 1 else 'ies'}: "
          f"{', '.join(copied) or '-'}")
    return 0


def cmd_status(args) -> int:
    from .operations.status import LEVELS, collect, render
    cfg = load_config(args.config_dir)
    state = collect(cfg)
    print(json.dumps(state, indent=2, default=str) if args.json else render(state))
    return LEVELS.index(state["health"]["level"])  # 0 ok, 1 warning, 2 critical


def cmd_paper(args) -> int:
    if not args.replay:
        print("live paper trading runs as the service: python -m daemons.paper_trader",
              file=sys.stderr)
        return 2
    from .trading.replay import ReplayError, replay
    cfg = load_config(args.config_dir)
    try:
        result = replay(cfg, _app_db(cfg), args.start, args.end, name=args.name,
                        progress=sys.stderr.isatty(), reset=args.reset)
    except ReplayError as e:
        print(f"replay: {e}", file=sys.stderr)
        return 1
    ret = result.equity / cfg.broker.initial_cash - 1
    print(f"replayed {result.window} as trader {args.name!r} with ensemble "
          f"v{', v'.join(map(str, result.versions))}: final equity {result.equity:,.2f} "
          f"({ret:+.2%} from {cfg.broker.initial_cash:,.2f})")
    return 0


def _trader_command(args):
    """(config, read-only engine, trader name) for a command about one trader: the one asked
    for, else 'paper' if it has traded, else the most recently active one (said on stderr).
    The name is None, and why said, when no trader has data or the one asked for has none."""
    from .trading.journal import Journal, pick_trader
    cfg = load_config(args.config_dir)
    engine = _read_db(cfg)
    name, note = pick_trader(engine, args.name)
    if args.name is not None and not Journal(engine, args.name).has_state():
        print(f"trader {args.name!r} does not exist in this database: {note}", file=sys.stderr)
        return cfg, engine, None
    if note:
        print(note, file=sys.stderr)
    return cfg, engine, name


def cmd_trader_status(args) -> int:
    from .trading.trader_views import render_trader_status, trader_status_data
    cfg, engine, name = _trader_command(args)
    if name is None:
        return 1
    _emit(args, trader_status_data(cfg, engine, name), render_trader_status)
    return 0


def cmd_reconcile(args) -> int:
    from .trading.reconcile import as_dict, reconcile, render
    cfg, engine, name = _trader_command(args)
    if name is None:
        return 1
    rec = reconcile(cfg, engine, name, args.start, args.end)
    print(json.dumps(as_dict(rec), indent=2, default=str) if args.json
          else render(rec, args.bars))
    return 0


def cmd_trader_history(args) -> int:
    from .trading.trader_views import render_trader_history, trader_history_data
    _, engine, name = _trader_command(args)
    if name is None:
        return 1
    _emit(args, trader_history_data(engine, name, args.limit), render_trader_history)
    return 0


def cmd_deploy(args) -> int:
    from .ensemble.selection import SelectionError
    from .operations import deploy
    cfg = load_config(args.config_dir)
    dry_run = args.dry_run
    try:
        decision, published = deploy.run(cfg, _app_db(cfg), args.study, dry_run)
    except SelectionError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1
    _emit(args, {**dataclasses.asdict(decision), "dry_run": dry_run, "published": published},
          _render_deploy)
    return 0


def _render_deploy(d: dict) -> str:
    from .operations.deploy import Decision
    m = d["metrics"]
    lines = [f"window: {m['window']}"] if "window" in m else []
    fields = {k: d[k] for k in Decision.__dataclass_fields__}
    lines.append(Decision(**fields).summary())
    if "candidate" in m:
        lines.append(_metrics_table({"candidate": m["candidate"],
                                     **({"current": m["current"]} if "current" in m else {})}))
    if d["dry_run"]:
        lines.append("dry run: " + ("would promote and publish a new ensemble" if d["promoted"]
                                    else "would change nothing"))
    elif d["published"]:
        lines.append(d["published"])
    return "\n".join(lines)


def _metrics_table(results: dict[str, dict]) -> str:
    rows = [("total return", "total_return", "{:+.2%}"), ("Sharpe", "sharpe", "{:.2f}"),
            ("Sortino", "sortino", "{:.2f}"), ("max drawdown", "max_drawdown", "{:.2%}"),
            ("Calmar", "calmar", "{:.2f}"), ("turnover", "turnover", "{:.1f}x"),
            ("fees", "fees", "{:,.2f}"), ("stop exits", "stops", "{}"),
            ("buy-and-hold return", "bh_total_return", "{:+.2%}"),
            ("buy-and-hold Sharpe", "bh_sharpe", "{:.2f}"),
            ("buy-and-hold max drawdown", "bh_max_drawdown", "{:.2%}")]
    names = list(results)
    out = [f"{'':<28}" + "".join(f"{n:>14}" for n in names)]
    for label, key, fmt in rows:
        out.append(f"{label:<28}" + "".join(f"{fmt.format(results[n][key]):>14}" for n in names))
    return "\n".join(out)


def cmd_backtest(args) -> int:
    from .ensemble.evaluation import evaluate, published_ensemble, trial_alone
    cfg = load_config(args.config_dir)
    engine = _read_db(cfg)
    study = args.study or cfg.active_study
    if args.trial is not None:
        ens = trial_alone(cfg, engine, study, args.trial)
        name = f"trial {ens.members[0].number}"
    else:
        ens = published_ensemble(cfg)
        name, study = f"ensemble v{ens.version}", ens.study
    evaluation = evaluate(cfg, engine, [ens], study, args.start, args.end)
    window, (result,) = evaluation.window, evaluation.results
    _emit(args, {"policy": name, "study": study, "window": str(window),
                 "first_bar": window.first.isoformat(), "last_bar": window.last.isoformat(),
                 "decisions": window.decisions,
                 "initial_equity": float(result.equity[0]),
                 "final_equity": float(result.equity[-1]), "metrics": result.metrics()},
          _render_backtest)
    return 0


def _render_backtest(d: dict) -> str:
    final, first = d["final_equity"], d["initial_equity"]
    return "\n".join([f"{d['policy']}: {d['window']}, live risk rules",
                      f"final equity {final:,.2f} ({final / first - 1:+.2%} from {first:,.2f})",
                      _metrics_table({d["policy"]: d["metrics"]})])


def cmd_report(args) -> int:
    from .operations.html_report import write_report
    cfg = load_config(args.config_dir)
    out = args.out or str(cfg.state_dir / "reports" / f"report-{pd.Timestamp.now(tz='UTC'):%Y%m%d-%H%M}.html")
    path = write_report(cfg, _read_db(cfg), out, args.trader, args.start, args.end)
    print(f"report written: {path}")
    return 0


def cmd_install(args) -> int:
    from .operations.install import install, uninstall
    if args.uninstall:
        uninstall(args.prefix, args.root)
    else:
        install(args.prefix, args.root, venv=not args.no_venv, user=not args.no_user)
    return 0


def cmd_monitor(args) -> int:
    from .operations.monitor import run_monitor
    return run_monitor(load_config(args.config_dir))


def cmd_alert(args) -> int:
    from .operations.monitor import alert_unit_failure
    print(alert_unit_failure(load_config(args.config_dir), args.unit))
    return 0  # a failing channel is logged, never an error of this unit


def cmd_demo(args) -> int:
    from .operations.demo import run_demo
    return run_demo(args.workdir, args.seed)


JSON_HELP = "print JSON (its shape: docs/schemas/{}.schema.json)"


MAX_COUNT = 10**7  # a count no command can honour beyond (an SQL LIMIT, trials, workers)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_COUNT:,}, "
                                         f"got {text!r}")
    return value


def utc_time(text: str) -> str:
    """A time argument that parses (`2023-06-01`, `2023-06-01T12:00`, with or without a zone,
    UTC if none), refused at the command line otherwise."""
    try:
        parsed = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError):
        parsed = pd.NaT
    if pd.isna(parsed):  # "nat" parses, as nothing
        raise argparse.ArgumentTypeError(f"expected a date or time like 2023-06-01 or "
                                         f"2023-06-01T12:00, got {text!r}")
    return text


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts after its name too (`cappuccino config check --config-dir`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config-dir", default=argparse.SUPPRESS, help=CONFIG_DIR_HELP)
    return common


def _group(sub, name: str, help: str, description: str):
    """A command with subcommands (`cappuccino NAME SUBCOMMAND`)."""
    parser = sub.add_parser(name, help=help, description=description)
    return parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)


def _add_config_and_data(sub, common) -> None:
    config = _group(sub, "config", "inspect and check the configuration",
                    "Inspect and check the configuration files.")
    check = config.add_parser(
        "check", parents=[common], help="validate the configuration and print the effective values",
        description="Validate cappuccino.yaml and active_study.yaml; print the effective "
                    "configuration with secrets masked (exit 0) or the error (exit 2).")
    check.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    check.set_defaults(func=cmd_config_check)

    data = _group(sub, "data", "market data: fill and inspect the bar cache",
                  "Market data: fill and inspect the bar cache.")
    fetch = data.add_parser(
        "fetch", parents=[common], help="fetch closed bars into the cache (only what it lacks)",
        description="Fetch closed bars from a source into the cache under the state dir. "
                    "Only ranges the cache does not hold yet are requested.")
    fetch.add_argument("--symbols", nargs="+", help="symbols like BTC/USD (default: config)")
    fetch.add_argument("--start", type=utc_time,
                       help="first bar, UTC (default: data.start or a year ago)")
    fetch.add_argument("--end", type=utc_time, help="end, exclusive, UTC (default: now)")
    fetch.add_argument("--source", choices=["alpaca", "csv"], help="default: data.source")
    fetch.add_argument("--path", help="CSV directory for --source csv (default: data.csv_path "
                       "or the bundled sample)")
    fetch.add_argument("--progress", action="store_true",
                       help="show the progress bar even when stderr is not a terminal")
    fetch.set_defaults(func=cmd_data_fetch)


def _add_training(sub, common) -> None:
    train = sub.add_parser(
        "train", parents=[common], help="run training workers for a study in the foreground",
        description="Run W training workers for a study in the foreground, with a progress bar, "
                    "until the study has N finished trials. The target is stored in the study, "
                    "so every worker (also under systemd, on any host) stops there.")
    train.add_argument("action", nargs="?", choices=["start", "stop"],
                       help="(systemd) start or stop cappuccino-train@STUDY units instead")
    train.add_argument("--study", help="study name (default: the active study)")
    train.add_argument("--n-trials", type=positive_int, help="target number of finished trials")
    train.add_argument("--workers", type=positive_int, default=1,
                       help="worker processes (default 1)")
    train.add_argument("--activate", action="store_true",
                       help="(start) also make the study the active one")
    train.set_defaults(func=cmd_train)

    study = _group(sub, "study", "studies: list, activate, delete, import",
                   "Studies in the configured storage.")
    s_list = study.add_parser("list", parents=[common], help="studies with trial counts",
                              description="List studies with complete/running/failed/"
                                          "pruned counts and best value.")
    s_list.add_argument("--json", action="store_true", help=JSON_HELP.format("study-list"))
    s_list.set_defaults(func=cmd_study_list)
    s_act = study.add_parser(
        "activate", parents=[common], help="make a study the one everything follows",
        description="Check that the study exists and write active_study.yaml atomically; "
                    "the path unit then runs the ensemble sync at once.")
    s_act.add_argument("name")
    s_act.set_defaults(func=cmd_study_activate)
    s_del = study.add_parser(
        "delete", parents=[common], help="delete a study, its trials and its models",
        description="Delete a study: its trials and their models in the artifact store. "
                    "Refused for the active study and for the study the current ensemble "
                    "serves (exit 1); asks for --yes (exit 2 without it).")
    s_del.add_argument("name")
    s_del.add_argument("--yes", action="store_true", help="confirm: it cannot be undone")
    s_del.set_defaults(func=cmd_study_delete)
    s_imp = study.add_parser(
        "import", parents=[common], help="copy studies from another storage",
        description="Copy studies from another Optuna storage (e.g. an old SQLite file) into "
                    "the configured one; existing studies are left alone.")
    s_imp.add_argument("--from", dest="source", required=True, help="source storage URL")
    s_imp.add_argument("--study", nargs="+", help="only these studies (default: all)")
    s_imp.set_defaults(func=cmd_study_import)
    dash = sub.add_parser(
        "dashboard", parents=[common], help="optuna-dashboard with models from any store",
        description="Serve optuna-dashboard on the configured storage with the configured "
                    "artifact store (filesystem, s3 or database), so that every trial's model "
                    "downloads from it. Needs optuna-dashboard installed (study list prints "
                    "the pip line).")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=positive_int, default=8080)
    dash.set_defaults(func=cmd_dashboard)

    artifacts = _group(sub, "artifacts", "trial models in the artifact store",
                       "Trial models in the configured artifact store (artifacts.store).")
    a_mig = artifacts.add_parser(
        "migrate", parents=[common], help="import models an earlier release kept on local disk",
        description="Upload the models that an earlier release wrote under "
                    "<state_dir>/trials to the configured artifact store and record them, so "
                    "that every host can serve them. Trials already in the store are left "
                    "alone; run it on the host that trained them.")
    a_mig.add_argument("--study", help="only this study (default: all)")
    a_mig.set_defaults(func=cmd_artifacts_migrate)


def _add_ensemble(sub, common) -> None:
    ensemble = _group(sub, "ensemble", "the traded ensemble: sync and show",
                      "The ensemble of the active study's best trials.")
    ens_sync = ensemble.add_parser(
        "sync", parents=[common], help="publish a new version if the top trials changed",
        description="Select the active study's top trials and publish a new ensemble version "
                    "atomically if the set changed; tell the trader. Exit 1 if the study is "
                    "unknown or has no eligible trial (the current ensemble is untouched).")
    ens_sync.add_argument("--study", help="override the active study (testing)")
    ens_sync.set_defaults(func=cmd_ensemble_sync)
    ens_show = ensemble.add_parser(
        "show", parents=[common], help="print the current version",
        description="Print the current ensemble version: study, age, each member's trial, "
                    "value and stop, and members trained under other risk rules.")
    ens_show.add_argument("--json", action="store_true", help=JSON_HELP.format("ensemble-show"))
    ens_show.set_defaults(func=cmd_ensemble_show)


def _add_trading(sub, common) -> None:
    paper = sub.add_parser(
        "paper", parents=[common], help="paper trading: replay history through the loop",
        description="Run the trading loop with the simulated broker on a simulated clock over "
                    "historical bars (--replay); live paper trading is the service.")
    paper.add_argument("--replay", action="store_true", help="replay history (required)")
    paper.add_argument("--from", dest="start", type=utc_time, help=WINDOW_FROM_HELP)
    paper.add_argument("--to", dest="end", type=utc_time, help=WINDOW_TO_HELP)
    paper.add_argument("--name", default="replay", help="trader name in the database "
                       "(its own simulated account; default: replay)")
    paper.add_argument("--reset", action="store_true",
                       help="start the trader afresh if it has state (else refused)")
    paper.set_defaults(func=cmd_paper)

    trader = _group(sub, "trader", "inspect a trader: status and history",
                    "Inspect the paper trader's state in the database.")
    t_status = trader.add_parser(
        "status", parents=[common], help="equity, cash, positions with stops, last bar",
        description="Equity, cash, positions with entry, peak and stop level, the last bar "
                    "processed and the ensemble version.")
    t_status.add_argument("--name", help=TRADER_HELP)
    t_status.add_argument("--json", action="store_true", help=JSON_HELP.format("trader-status"))
    t_status.set_defaults(func=cmd_trader_status)
    t_hist = trader.add_parser("history", parents=[common], help="orders, fills, fees, P&L",
                               description="Orders with their fills and fees, and the "
                                           "realised P&L.")
    t_hist.add_argument("--name", help=TRADER_HELP)
    t_hist.add_argument("--limit", type=positive_int, default=50,
                        help="most recent orders shown")
    t_hist.add_argument("--json", action="store_true", help=JSON_HELP.format("trader-history"))
    t_hist.set_defaults(func=cmd_trader_history)

    rec = sub.add_parser(
        "reconcile", parents=[common], help="live vs replay: every difference, attributed",
        description="Replay a trader's recorded decisions from its recorded account through "
                    "the backtest environment and show, bar by bar, how its equity differs "
                    "and why: fill price, fee, skipped order, stop, quiet bar, fill quantity, "
                    "and what is left unexplained.")
    rec.add_argument("--from", dest="start", type=utc_time,
                     help="first decision bar (UTC; default: the trader's first)")
    rec.add_argument("--to", dest="end", type=utc_time,
                     help="end of the window, exclusive (UTC; default: its latest decision)")
    rec.add_argument("--name", help=TRADER_HELP)
    rec.add_argument("--bars", type=int, default=20, help="bars shown (the largest "
                     "differences; default 20)")
    rec.add_argument("--json", action="store_true", help="every bar, as JSON")
    rec.set_defaults(func=cmd_reconcile)


def _add_validation(sub, common) -> None:
    deploy = sub.add_parser(
        "deploy", parents=[common], help="validate the best trial out of sample; promote it",
        description="Backtest the active study's best trial and the current ensemble over the "
                    "held-out window; gate on PBO, deflated Sharpe and the improvement; record "
                    "the decision; promote (publish) if it passes.")
    deploy.add_argument("--dry-run", action="store_true", help="show the decision, change nothing")
    deploy.add_argument("--study", help="default: the active study")
    deploy.add_argument("--json", action="store_true", help=JSON_HELP.format("deploy"))
    deploy.set_defaults(func=cmd_deploy)

    backtest = sub.add_parser(
        "backtest", parents=[common], help="backtest a trial or the current ensemble",
        description="Backtest a trial (alone) or the current ensemble over a date range through "
                    "the training environment with the live risk rules; print the metrics.")
    which = backtest.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial id (storage-wide, not the number)")
    which.add_argument("--ensemble", choices=["current"], help="the current ensemble")
    backtest.add_argument("--study", help="study of --trial (default: the active study)")
    backtest.add_argument("--from", dest="start", type=utc_time, help=WINDOW_FROM_HELP)
    backtest.add_argument("--to", dest="end", type=utc_time, help=WINDOW_TO_HELP)
    backtest.add_argument("--json", action="store_true", help=JSON_HELP.format("backtest"))
    backtest.set_defaults(func=cmd_backtest)

    report = sub.add_parser(
        "report", parents=[common], help="write one self-contained HTML report",
        description="Write an HTML file (charts inline): paper trading against buy-and-hold, "
                    "a held-out backtest of the current ensemble with each member's part, and "
                    "the study's optimisation history.")
    report.add_argument("--out", help="file to write (default: <state_dir>/reports/...)")
    report.add_argument("--trader", help="trader name (default: 'paper' if it has traded, "
                        "else the most recently active trader)")
    report.add_argument("--from", dest="start", type=utc_time, help=WINDOW_FROM_HELP)
    report.add_argument("--to", dest="end", type=utc_time, help=WINDOW_TO_HELP)
    report.set_defaults(func=cmd_report)


def _add_operations(sub, common) -> None:
    from .operations.install import OPERATOR_UNITS, VENDOR_UNITS
    inst = sub.add_parser(
        "install", help="install the suite: virtualenv, units, example config, user",
        description="Install the package (not editable, the versions and hashes of "
                    "requirements.lock) into a virtualenv under PREFIX, the systemd units into "
                    f"{VENDOR_UNITS} (your changes go in drop-ins under {OPERATOR_UNITS}, "
                    "which install never touches), the example configuration into "
                    "/etc/cappuccino where no file exists (never overwriting), and the service "
                    "user.")
    inst.add_argument("--prefix", default="/opt/cappuccino")
    inst.add_argument("--root", default="/", help="stage under this directory instead of /")
    inst.add_argument("--no-venv", action="store_true", help="units and config only")
    inst.add_argument("--no-user", action="store_true", help="do not create the user")
    inst.add_argument("--uninstall", action="store_true",
                      help="remove the units and the prefix (configuration and state stay)")
    inst.set_defaults(func=cmd_install)

    monitor = sub.add_parser(
        "monitor", parents=[common], help="run the checks; alert once per incident; metrics",
        description="Check training progress, the study target, the ensemble's age and "
                    "study, the trader's lag and drawdown, stop exits and free disk; send an "
                    "alert when an incident starts (once), record when it ends; write the "
                    "Prometheus metrics (monitor.metrics_textfile).")
    monitor.set_defaults(func=cmd_monitor)
    alert = sub.add_parser("alert", parents=[common], help="send one alert about a failed unit",
                           description="Send an alert through every configured channel about "
                                       "a failed unit (cappuccino-alert@%%n.service runs this).")
    alert.add_argument("unit")
    alert.set_defaults(func=cmd_alert)

    status = sub.add_parser(
        "status", parents=[common], help="one screen: study, training, ensemble, traders, units",
        description="Show the active study, training progress, the ensemble (whether it "
                    "follows the active study, and how many trials it still needs), the "
                    "traders, the deployer's last decision and the units. Exit 0 ok, 1 "
                    "warning, 2 critical (the health level), for any monitoring system.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser(
        "demo", help="run the pipeline on the embedded defaults in a temporary state dir",
        description="Run the pipeline end to end on the embedded defaults (SQLite, bundled "
                    "sample data, simulated broker) in a temporary directory; no network needed.")
    demo.add_argument("--workdir", help="directory for the demo's config and state "
                      "(default: a new temporary directory)")
    demo.add_argument("--seed", type=int, help="seed the hyperparameter sampler: the same seed "
                      "gives the same trials and figures (default: unseeded)")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="cappuccino",
        description="Cappuccino: deep-RL crypto trading that runs itself under systemd.")
    parser.add_argument("--version", action="version", version=f"cappuccino {__version__}")
    parser.add_argument("--config-dir", help=CONFIG_DIR_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_config_and_data, _add_training, _add_ensemble, _add_trading,
                _add_validation, _add_operations):
        add(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .common.errors import Terminated, stop_on_sigterm
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with stop_on_sigterm():
            return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): cleaned up on the way
        terminated = isinstance(e, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:  # noqa: BLE001 - every error ends as one line (see errors.py)
        from .common.errors import describe
        if args.debug:
            raise
        code, line = describe(e)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
