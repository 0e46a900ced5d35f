"""Does the search find agents that trade better than holding? Three held-out windows of real
data, each searched with a fixed budget, the ensemble the product would publish backtested
with the live risk rules, against equal-weight buy-and-hold with and without those rules.

Data: ../shared/data/binance_spot_1h (7 assets). For each window the configuration ends the
data at the window's end and holds out its last `heldout_days`, so every trial trains strictly
before the window (the product's own fencing: the study's recorded train_end, an embargo, CV
inside the training range). The budget is a number of trials of `--timesteps` PPO steps each,
on this machine's CPU threads (or a GPU when one is there); the table says which.

    python benchmarks/search_quality.py --budget 4 --timesteps 40000     # ~1 h on 2 cores
    python benchmarks/search_quality.py --budget 10min --timesteps 40000 # 10 min per window
    python benchmarks/search_quality.py --windows bear --trials 2 --timesteps 20000
    python benchmarks/search_quality.py --windows sideways --minutes 15 --split-batch 1

`--minutes M` gives each window a wall-time budget instead of a trial count (the trial running
when it ends is stopped and not counted); `--split-batch B` sets `training.split_batch` (1:
each trial's trainings one after another, the path before batching; default: the device's);
`--precision float32` the training arithmetic before bfloat16 (default: the device's);
`--feature-set v2` the features the agents see (default: the product's v1).

With `--workdir DIR` the studies are kept, and a second run over the same DIR trains only
what is missing (a larger --trials adds trials) before evaluating again.

Per window it prints the trials completed, the best CV value, the PBO of the study's trials,
and for the published ensemble (or the fallback when no trial qualifies), equal-weight
buy-and-hold frictionless, and equal-weight buy-and-hold under the same risk rules (fees,
reserve, caps, trailing stop with the re-entry rule): total return, Sharpe, Sortino, max
drawdown, turnover, fees, stop exits; when the fallback was published, also the top trials as
an ensemble regardless of their CV value (what the agents would have done); and a fixed rule
as a reference (hold equal weights while the market's 168 h trend is up, cash while it is
down: is there anything in v2's market features to find?) and volatility-managed holding (the
`hold_vol_managed` fallback, same rules). Then the target: on at least two
of three windows the ensemble's Sharpe >= buy-and-hold's under the same rules, its max
drawdown <= frictionless buy-and-hold's, and PBO < 0.5. Last, issue 26's yardstick from daily
returns (benchmarks/yardstick.py), per set and pooled, pass or miss per target line; `--assets
default,other` runs the six sets (the other six shared assets once, with the design frozen).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml

from cappuccino_core.rl.backtest import (HoldEqualWeight, VolManagedHold, backtest_ensemble,
                                     first_decision_bar, hold_settings, max_drawdown,
                                     run_backtest, sortino, trading_settings)
from cappuccino_core.common.config import load_config, set_config_values
from cappuccino_core.data import load_bars
from cappuccino_core.data.features import FEATURE_SETS, compute_features, feature_names
from cappuccino_core.operations.deploy import _splits_matrix, probability_of_backtest_overfitting
from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir
from cappuccino_core.ensemble.evaluation import trial_alone
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.ensemble.selection import SelectionError
from cappuccino_core.ensemble.serving import Ensemble
from cappuccino_core.rl.env import Market, Normalisation
from cappuccino_core.storage.database import app_engine, optuna_storage
from cappuccino_core.training.worker import WorkerHooks, open_study, run_worker, set_target
from cappuccino_core.rl.window import held_out_start, resolve_window
from yardstick import (block_bootstrap_interval, daily_metrics, daily_returns,  # noqa: E402
                       information_ratio, pbo_daily_blocks)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h"
ASSETS = {"default": ["BTC/USD", "ETH/USD", "LTC/USD", "BCH/USD", "LINK/USD", "UNI/USD",
                      "AAVE/USD"],
          # the six shared assets the default set does not use: run once, with the design frozen
          "other": ["ADA/USD", "AVAX/USD", "BNB/USD", "DOGE/USD", "SOL/USD", "XRP/USD"]}
SYMBOLS = ASSETS["default"]
PBO_TRIALS = 20  # the best trials, each backtested alone over the window, for the daily PBO
HELD_OUT_DAYS = 60
# (name, the held-out window's end): a 2022 bear market (LUNA, then Celsius and 3AC), a 2023
# bull run (October to December), and a sideways summer (2023-06 to 2023-08)
WINDOWS = {"bear": "2022-07-01", "bull": "2023-12-15", "sideways": "2023-08-31"}


class MarketTrendRule:
    """A reference, not the product: equal-weight holding (as `HoldEqualWeight`) while the
    assets' mean price against its 168 h mean (v2's `mkt_trend_168h`) is above 0, cash below.
    Whether the simplest use of v2's market features beats holding says whether there is
    something in them for an agent to find."""
    needs_time = True

    def __init__(self, bars, n_assets: int):
        v2 = compute_features(bars, "v2")
        self.trend = torch.as_tensor(v2[:, 0, feature_names("v2").index("mkt_trend_168h")])
        self.hold = HoldEqualWeight(n_assets)

    def __call__(self, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        hold = self.hold(obs)
        cash = torch.zeros_like(hold)
        cash[:, -1] = 1.0
        return torch.where((self.trend[t] > 0)[:, None], hold, cash)


def config_for(root: Path, end: str, timesteps: int, split_batch: int | None,
               precision: str = "auto", feature_set: str = "v1",
               symbols: list[str] = SYMBOLS, decision_bars: int = 1) -> Path:
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    start = str((np.datetime64(end) - np.timedelta64(HELD_OUT_DAYS + 540, "D")))
    (etc / "cappuccino.yaml").write_text(yaml.safe_dump({
        "paths": {"state_dir": str(root / "state")},
        "data": {"source": "csv", "csv_path": str(DATA), "symbols": symbols,
                 "start": start, "end": end, "feature_set": feature_set,
                 "decision_bars": decision_bars},
        "training": {"total_timesteps": timesteps, "heldout_days": HELD_OUT_DAYS,
                     "cv": "walk_forward", "cv_groups": 5, "cv_test_groups": 1,
                     "split_batch": split_batch, "precision": precision},
        "ensemble": {"top_n": 5, "min_members": 2},  # the product's min_value and fallback
    }))
    (etc / "active_study.yaml").write_text(yaml.safe_dump({"study": "quality"}))
    return etc


def run_window(name: str, end: str, trials: int, timesteps: int, root: Path,
               fixed: dict | None = None, minutes: float | None = None,
               split_batch: int | None = None, precision: str = "auto",
               feature_set: str = "v1", symbols: list[str] = SYMBOLS,
               decision_bars: int = 1) -> dict:
    cfg = load_config(config_for(root, end, timesteps, split_batch, precision, feature_set,
                                 symbols, decision_bars))
    optuna_storage(cfg)
    engine = app_engine(cfg)
    began = time.monotonic()
    study = open_study(cfg, cfg.active_study)
    set_target(study, trials if minutes is None else 10**6)
    # a lever under test: every trial of the budget (more than a wall time can use) holds it
    queued = trials - len(study.trials) if minutes is None else 1000
    for _ in range(queued if fixed else 0):
        study.enqueue_trial(fixed, skip_if_exists=False)
    hooks = WorkerHooks(status=lambda text: None)
    timer = threading.Timer(minutes * 60, hooks.stop.set) if minutes else None
    if timer:
        timer.start()
    run_worker(cfg, cfg.active_study, hooks)
    if timer:
        timer.cancel()
    search_s = time.monotonic() - began
    complete = [t for t in study.trials if t.value is not None]
    result = sync(cfg, engine)
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    bars = load_bars(cfg)
    features = compute_features(bars, cfg.data.feature_set)
    window = resolve_window(bars, None, None, first_decision_bar(ens),
                            held_out_start(engine, cfg.active_study), cfg.active_study,
                            cfg.data.decision_bars)
    res = backtest_ensemble(cfg, ens, bars, features, window.lo, window.hi)
    A = len(symbols)
    market = Market.from_bars(bars, Normalisation(np.zeros((A, features.shape[2])),
                                                  np.ones((A, features.shape[2]))),
                              features=features)
    rules = run_backtest(HoldEqualWeight(A), market, window.lo, window.hi,
                         hold_settings(trading_settings(cfg, None)))
    trend = run_backtest(MarketTrendRule(bars, A), market, window.lo, window.hi,
                         hold_settings(trading_settings(cfg, None)))
    vol_managed = run_backtest(VolManagedHold(features), market, window.lo, window.hi,
                               hold_settings(trading_settings(cfg, None)))
    m, r = res.metrics(), rules.metrics()
    frictionless = {"total_return": m["bh_total_return"], "sharpe": m["bh_sharpe"],
                    "sortino": sortino(res.benchmark_returns),
                    "max_drawdown": max_drawdown(res.benchmark_equity)}
    # what the agents themselves would have done: the top trials, whatever their CV value
    set_config_values(cfg.config_dir, "ensemble", {"min_value": None, "near_constant": "admit"})
    anyway = load_config(cfg.config_dir)
    sync(anyway, engine)
    agents = backtest_ensemble(anyway, Ensemble.load(current_dir(ensembles_dir(anyway)), anyway),
                               bars, features, window.lo, window.hi).metrics()
    set_config_values(cfg.config_dir, "ensemble", {"min_value": cfg.ensemble.min_value,
                                                   "near_constant": cfg.ensemble.near_constant})
    perf = _splits_matrix(engine, [t._trial_id for t in complete])
    pbo = probability_of_backtest_overfitting(perf) if perf.size else float("nan")
    near_constant = sum(bool(t.user_attrs.get("policy", {}).get("near_constant"))
                        for t in complete)
    daily_oos = []  # the best trials alone over the window: the daily PBO's matrix
    for t in sorted(complete, key=lambda t: t.value, reverse=True)[:PBO_TRIALS]:
        try:
            alone = trial_alone(cfg, engine, cfg.active_study, t._trial_id)
        except SelectionError:
            continue
        daily_oos.append(daily_returns(backtest_ensemble(cfg, alone, bars, features, window.lo,
                                                         window.hi).equity))
    return {"name": name, "window": str(window), "trials": len(complete),
            "search_min": search_s / 60,
            "best_cv": max((t.value for t in complete), default=float("nan")),
            "near_constant": near_constant, "pbo": pbo, "sync": result.message,
            "fallback": ens.fallback, "ensemble": m, "agents": agents, "bh_rules": r,
            "trend_rule": trend.metrics(), "vol_managed": vol_managed.metrics(),
            "bh": frictionless,
            "equity": {"published": res.equity, "holding": rules.equity,
                       "vol_managed": vol_managed.equity},
            "turnover_ratio": res.turnover / rules.turnover if rules.turnover else float("nan"),
            "pbo_daily": pbo_daily_blocks(np.array(daily_oos).T) if len(daily_oos) > 1
            else float("nan")}


def fmt(x, kind):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return {"pct": f"{x:+.1%}", "num": f"{x:.2f}", "int": f"{int(x)}"}[kind]


def print_table(rows: list[dict], budget: str, timesteps: int, decision_bars: int = 1) -> None:
    device = "cuda" if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    print(f"\nbudget: {budget} x {timesteps:,} PPO steps per fit (walk-forward, 5 groups), "
          f"{device}, {os.cpu_count()} cores; a decision every {decision_bars} bar(s)\n")
    head = (f"{'set':<17}{'policy':<22}{'return':>9}{'Sharpe':>8}{'Sortino':>9}"
            f"{'max DD':>8}{'turnover':>10}{'fees':>10}{'stops':>7}")
    print(head)
    hits = 0
    for row in rows:
        e, b, f = row["ensemble"], row["bh_rules"], row["bh"]
        label = "ensemble" if row["fallback"] is None else f"fallback ({row['fallback']})"
        rows_out = [(label, e)] + ([("top-5 agents, any value", row["agents"])]
                                   if row["fallback"] is not None else [])
        for pol, m in rows_out + [("B&H, same risk rules", b), ("B&H, frictionless", f),
                                  ("trend rule, same rules", row["trend_rule"]),
                                  ("vol-managed, same rules", row["vol_managed"])]:
            print(f"{row.get('set', row['name']):<17}{pol:<22}{fmt(m.get('total_return'), 'pct'):>9}"
                  f"{fmt(m.get('sharpe'), 'num'):>8}{fmt(m.get('sortino'), 'num'):>9}"
                  f"{fmt(m.get('max_drawdown'), 'pct'):>8}{fmt(m.get('turnover'), 'num'):>10}"
                  f"{fmt(m.get('fees'), 'num'):>10}{fmt(m.get('stops'), 'int'):>7}")
        hit = (e["sharpe"] >= b["sharpe"] and e["max_drawdown"] <= f["max_drawdown"]
               and row["pbo"] < 0.5)
        by_agent = hit and row["fallback"] is None  # the fallback meets it without any skill
        hits += by_agent
        said = ("MET" if by_agent else
                f"met only by the fallback ({row['fallback']}): no agent qualified" if hit
                else "missed")
        print(f"{'':<10}{row['window']}; {row['trials']} trials in {row['search_min']:.0f} min, "
              f"best CV value {fmt(row['best_cv'], 'num')}, {row['near_constant']} near-constant, "
              f"PBO {fmt(row['pbo'], 'num')}; target {said}")
        print(f"{'':<10}sync: {row['sync']}")
    print(f"\ntarget (Sharpe >= B&H under the same rules, max DD <= frictionless B&H, PBO < 0.5) "
          f"met by a published ensemble on {hits} of {len(rows)} windows (wanted: 2 of 3)")


def print_yardstick(rows: list[dict]) -> None:
    """Issue 26's target, from daily returns, per set and pooled: pass or miss per line."""
    print("\ndaily yardstick (Sharpe, Sortino, max DD from daily closes; holding = equal "
          "weights under the same rules)")
    print(f"{'set':<18}{'policy':<26}{'Sharpe':>8}{'Sortino':>9}{'max DD':>8}{'log ret':>9}"
          f"{'turnover/holding':>18}{'PBO daily':>11}")
    excess, vs_managed, sets, excess_log = [], [], len(rows), 0.0
    sharpe_ok = dd_ok = turnover_ok = 0
    pbos = []
    for row in rows:
        eq = row["equity"]
        pub, hold, managed = (daily_metrics(eq[k]) for k in ("published", "holding",
                                                             "vol_managed"))
        label = "ensemble" if row["fallback"] is None else f"fallback ({row['fallback']})"
        for pol, m, extra in ((label, pub, f"{row['turnover_ratio']:>18.2f}"
                               f"{fmt(row['pbo_daily'], 'num'):>11}"),
                              ("holding, same rules", hold, ""),
                              ("vol-managed, same rules", managed, "")):
            print(f"{row['set']:<18}{pol:<26}{m['sharpe']:>8.2f}{m['sortino']:>9.2f}"
                  f"{m['max_drawdown']:>8.1%}{m['log_return']:>+9.3f}{extra}")
        excess_log += pub["log_return"] - hold["log_return"]
        sharpe_ok += pub["sharpe"] >= hold["sharpe"]
        dd_ok += pub["max_drawdown"] <= hold["max_drawdown"]
        turnover_ok += row["fallback"] is not None or row["turnover_ratio"] <= 3
        excess.append(daily_returns(eq["published"]) - daily_returns(eq["holding"]))
        vs_managed.append((daily_returns(eq["published"]), daily_returns(eq["vol_managed"])))
        if not np.isnan(row["pbo_daily"]):
            pbos.append(row["pbo_daily"])
    pooled = np.concatenate(excess)
    lo, hi = block_bootstrap_interval(pooled)
    ir = information_ratio(np.concatenate([a for a, _ in vs_managed]),
                           np.concatenate([b for _, b in vs_managed]))
    need = int(np.ceil(sets * 4 / 6))  # 4 of 6 sets, or as many of the sets run
    lines = [
        ("published policy not near-constant (selection refuses them) and turnover <= 3x "
         "holding's", turnover_ok == sets, f"{turnover_ok} of {sets} sets"),
        (f"Sharpe >= holding's under the same rules in {need} of {sets} sets", sharpe_ok >= need,
         f"{sharpe_ok} of {sets}"),
        (f"max drawdown <= holding's under the same rules in {need} of {sets} sets",
         dd_ok >= need, f"{dd_ok} of {sets}"),
        ("pooled excess log return over holding > 0", excess_log > 0, f"{excess_log:+.3f}"),
        ("pooled information ratio against vol-managed holding >= 0", ir >= 0, f"{ir:+.2f}"),
        ("PBO (CSCV, 16 blocks of daily out-of-sample returns) < 0.3", bool(pbos) and
         max(pbos) < 0.3, ", ".join(f"{x:.2f}" for x in pbos) or "not measurable"),
        ("stretch: 90% block-bootstrap interval of the pooled daily excess above 0", lo > 0,
         f"[{lo:+.4f}, {hi:+.4f}]"),
    ]
    print()
    for text, ok, figure in lines:
        print(f"  {'PASS' if ok else 'miss'}  {text}: {figure}")
    fallbacks = sum(row["fallback"] is not None for row in rows)
    if fallbacks:
        print(f"  ({fallbacks} of {sets} sets published the fallback: a line it passes is "
              "passed without any skill)")


def parse_fixed(text: str) -> dict:
    """`reward=excess,lookback=8` -> {"reward": "excess", "lookback": 8}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def parse_budget(text: str) -> tuple[str, float]:
    """`--budget`: "4" is four trials, "10min" (or "10m") ten minutes of wall time."""
    text = text.strip().lower()
    for suffix in ("min", "m"):
        if text.endswith(suffix):
            minutes = float(text.removesuffix(suffix))
            if minutes > 0:
                return "minutes", minutes
    if text.isdigit() and int(text) > 0:
        return "trials", int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: a number of trials (4) or of minutes (10min)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4, help="trials per window")
    p.add_argument("--timesteps", type=int, default=40_000, help="PPO steps per fit")
    p.add_argument("--windows", default=",".join(WINDOWS), help="bear,bull,sideways")
    p.add_argument("--assets", default="default",
                   help="asset sets: default (the 7 of the default config), other (the 6 other "
                        "shared assets: run once, with the design frozen), or default,other "
                        "for the six sets")
    p.add_argument("--workdir", help="keep the studies here (default: a temporary dir)")
    p.add_argument("--minutes", type=float,
                   help="a wall-time budget per window instead of --trials")
    p.add_argument("--budget", type=parse_budget, metavar="N | Nmin",
                   help="the budget per window in one word: N trials, or N minutes of wall "
                        "time (e.g. 4, 10min); the same as --trials N or --minutes N")
    p.add_argument("--split-batch", type=int,
                   help="training.split_batch (1: trainings one after another)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="training.precision (float32: the arithmetic before bfloat16)")
    p.add_argument("--feature-set", default="v1", choices=sorted(FEATURE_SETS),
                   help="data.feature_set (v2: v1 plus two-week trends and the market)")
    p.add_argument("--decision-bars", type=int, default=1,
                   help="data.decision_bars: the policy decides every this many bars")
    p.add_argument("--fix", default="", help="hyperparameters held fixed, the rest searched "
                   "(a lever under test), e.g. reward=excess,lookback=8")
    args = p.parse_args()
    if args.budget:
        kind, amount = args.budget
        if kind == "trials":
            args.trials, args.minutes = amount, None
        else:
            args.minutes = amount
    windows = args.windows.split(",")
    unknown = set(windows) - set(WINDOWS)
    if unknown:
        p.error(f"unknown window(s) {', '.join(sorted(unknown))}: choose from {', '.join(WINDOWS)}")
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: this benchmark needs the shared real data")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="cappuccino-quality-"))
    rows = []
    budget = f"{args.minutes:g} min" if args.minutes else f"{args.trials} trials"
    asset_sets = args.assets.split(",")
    if set(asset_sets) - set(ASSETS):
        p.error(f"unknown asset set(s): choose from {', '.join(ASSETS)}")
    for assets in asset_sets:
        for name in windows:
            print(f"{assets} assets, window {name}: searching ({budget}) ...", flush=True)
            row = run_window(name, WINDOWS[name], args.trials, args.timesteps,
                             root / assets / name, parse_fixed(args.fix), args.minutes,
                             args.split_batch, args.precision, args.feature_set, ASSETS[assets],
                             args.decision_bars)
            rows.append(row | {"set": f"{assets}/{name}"})
    if args.fix:
        print(f"\nheld fixed (the rest searched): {args.fix}")
    if args.split_batch is not None:
        print(f"\ntraining.split_batch: {args.split_batch}")
    print(f"training.precision: {args.precision}; data.feature_set: {args.feature_set}")
    print_table(rows, budget, args.timesteps, args.decision_bars)
    print_yardstick(rows)
    if "other" in asset_sets:
        print("\nthe 'other' sets: the six shared assets the design never saw (run once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
