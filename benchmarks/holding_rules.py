"""Holding, measured under the product's rules (issue 26, points 7 and 8): which trailing stop
serves holding itself, and whether volatility-managed holding beats plain holding.

Equal-weight holding traded under the product's rules (fees, slippage, caps, cash reserve,
the 24-bar re-entry cooldown, holding's 2% no-trade band) with each trailing-stop rule, and
volatility-managed holding (`ensemble.fallback: hold_vol_managed`, the trader's own code: equal
weights scaled to the median of the last month's weekly volatility), on the three benchmark
windows for the 7 default assets and the 6 other shared assets. Sharpe and max drawdown from
daily equity.

- A stop rule is better for holding than the 10% default in a set when its Sharpe is higher
  AND its drawdown lower in at least two of the three windows.
- Volatility-managed holding beats holding (both under the same rules, the 10% stop) when its
  Sharpe is at least holding's in 4 of the 6 sets, its drawdown at most holding's in 4 of 6,
  and its pooled excess log return and information ratio are above 0.

    python benchmarks/holding_rules.py [--rules 0.10,none,0.05,0.20]

A volatility-scaled trailing stop (`atr10`: the peak less 10 average true ranges of 14 bars)
is measured through the environment's `trailing_stop_atr`, a benchmark-only setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cappuccino_core.data import align  # noqa: E402
from cappuccino_core.data.csv_source import CsvSource  # noqa: E402
from cappuccino_core.data.features import compute_features  # noqa: E402
from cappuccino_core.rl.backtest import (  # noqa: E402
    HOLD_BAND,
    HoldEqualWeight,
    VolManagedHold,
    max_drawdown,
    run_backtest,
)
from cappuccino_core.rl.env import Market  # noqa: E402
from cappuccino_core.rl.env_settings import EnvSettings, Normalisation  # noqa: E402
from signal_ceiling import ASSETS, DATA, WINDOWS  # noqa: E402  (the same sets and windows)
from yardstick import daily_returns  # noqa: E402

HISTORY = pd.Timedelta(days=60)  # before a window: features' warm-up and the volatility target


def daily_sharpe(equity: np.ndarray) -> float:
    r = daily_returns(equity)
    return float(r.mean() / r.std() * np.sqrt(365)) if r.std() > 0 else 0.0


def run(policy, bars, features, lo: int, hi: int, stop: tuple[float | None, str, float | None]):
    """A policy under the product's rules (holding's band) with trailing stop `stop`:
    (level, checked intrabar or at the close, ATR multiple)."""
    a = len(bars.symbols)
    norm = Normalisation(np.zeros((a, features.shape[2])), np.ones((a, features.shape[2])))
    market = Market.from_bars(bars, norm, features=features)
    settings = dataclasses.replace(EnvSettings(), trailing_stop_pct=stop[0], stop_check=stop[1],
                                   trailing_stop_atr=stop[2], min_rebalance_weight=HOLD_BAND,
                                   lookback=1)
    return run_backtest(policy, market, lo, hi, settings)


def figures(res) -> dict:
    return {"return": float(res.equity[-1] / res.equity[0] - 1),
            "sharpe": daily_sharpe(res.equity), "max_dd": max_drawdown(res.equity),
            "stops": res.stops, "turnover": res.turnover, "equity": res.equity}


def parse_rule(text: str) -> tuple[float | None, str, float | None]:
    """'0.10' (checked intrabar), '0.10@close', 'none', 'atr10' (10 average true ranges of
    14 bars under the peak), 'atr10@close'."""
    level, _, check = text.partition("@")
    if level.startswith("atr"):
        return None, check or "intrabar", float(level[3:])
    return (None if level == "none" else float(level)), check or "intrabar", None


def rule_name(rule: tuple[float | None, str, float | None]) -> str:
    level, check, atr = rule
    name = f"{atr:g} ATR" if atr is not None else "none" if level is None else f"{level:.0%}"
    return name + (" close" if check == "close" else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", default="0.10,none,0.05,0.20,0.10@close,0.20@close,atr5,atr10,"
                   "atr20,atr10@close",
                   help="trailing stops to compare: 0.10 (checked intrabar), 0.10@close, none, "
                        "atr10 (10 average true ranges under the peak); the first is the "
                        "baseline")
    args = p.parse_args(argv)
    rules = [parse_rule(r) for r in args.rules.split(",")]
    started = time.monotonic()
    src = CsvSource(DATA, "1h", 3600)
    name = {r: rule_name(r) for r in rules}
    print(f"{'set':<8} {'window':<9} {'policy':<26} {'return':>8} {'Sharpe':>7} {'max DD':>7} "
          f"{'stops':>6} {'turnover':>8}")
    stop_wins: dict[tuple[str, float | None], list[bool]] = {}
    vm_rows = []
    for set_name, symbols in ASSETS.items():
        for window, (start, end) in WINDOWS.items():
            lo_t, hi_t = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
            bars = align({s: src.fetch(s, lo_t - HISTORY, hi_t) for s in symbols}, symbols, 3600)
            features = compute_features(bars, "v1")
            lo, hi = int(bars.index.searchsorted(lo_t)), len(bars)
            hold = HoldEqualWeight(len(symbols))
            rows = {f"hold, stop {name[r]}": figures(run(hold, bars, features, lo, hi, r))
                    for r in rules}
            rows[f"vol-managed, stop {name[rules[0]]}"] = figures(
                run(VolManagedHold(features), bars, features, lo, hi, rules[0]))
            base = rows[f"hold, stop {name[rules[0]]}"]
            for label, m in rows.items():
                print(f"{set_name:<8} {window:<9} {label:<26} {m['return']:>+8.1%} "
                      f"{m['sharpe']:>7.2f} {m['max_dd']:>7.1%} {m['stops']:>6} "
                      f"{m['turnover']:>8.1f}")
            for r in rules[1:]:
                m = rows[f"hold, stop {name[r]}"]
                stop_wins.setdefault((set_name, r), []).append(
                    m["sharpe"] > base["sharpe"] and m["max_dd"] < base["max_dd"])
            vm_rows.append((base, rows[f"vol-managed, stop {name[rules[0]]}"]))
    print(f"\nstop rules against the {name[rules[0]]} stop, for holding itself (Sharpe higher AND "
          "drawdown lower), windows of 3:")
    for (set_name, r), w in stop_wins.items():
        print(f"  {set_name:<8} {name[r]:>5}: {sum(w)} of 3 "
              f"({'better' if sum(w) >= 2 else 'not better'})")
    sharpe_ok = sum(v["sharpe"] >= h["sharpe"] for h, v in vm_rows)
    dd_ok = sum(v["max_dd"] <= h["max_dd"] for h, v in vm_rows)
    excess = float(sum(np.log(v["equity"][-1] / h["equity"][-1]) for h, v in vm_rows))
    diff = np.concatenate([daily_returns(v["equity"]) - daily_returns(h["equity"])
                           for h, v in vm_rows])
    ir = float(diff.mean() / diff.std() * np.sqrt(365)) if diff.std() > 0 else 0.0
    beats = sharpe_ok >= 4 and dd_ok >= 4 and excess > 0 and ir > 0
    print(f"\nvolatility-managed holding against holding, both under the same rules "
          f"({len(vm_rows)} sets):")
    print(f"  Sharpe at least holding's: {sharpe_ok} of {len(vm_rows)} "
          f"({'pass' if sharpe_ok >= 4 else 'miss'}, 4 needed)")
    print(f"  max drawdown at most holding's: {dd_ok} of {len(vm_rows)} "
          f"({'pass' if dd_ok >= 4 else 'miss'}, 4 needed)")
    print(f"  pooled excess log return: {excess:+.3f} ({'pass' if excess > 0 else 'miss'})")
    print(f"  information ratio of daily excess returns: {ir:+.2f} ({'pass' if ir > 0 else 'miss'})")
    print(f"  => {'beats holding: the honest default fallback' if beats else 'does not beat holding: cash stays the default fallback'}")
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
