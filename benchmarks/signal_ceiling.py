"""The signal ceiling (issue 26): before any RL lever, how much of the next 1 / 4 / 24 / 168
hours' return do the product's features predict out of sample, and can the simplest
cost-aware rule built on that forecast beat holding under the product's costs?

Data: ../shared/data/binance_spot_1h, the 7 default assets and, separately, the six shared
assets the default set does not use. Features: the configured set (`--features`, default v1),
as the agents see them (causal: a row uses only bars up to its own close).

Two targets per horizon h:
- the market: the equal-weight basket's log return over the next h hours, from the assets'
  mean features;
- each asset over the market: its log return over the next h hours less the basket's, from its
  own features, pooled over the assets.

Two models, refit walk-forward every `--refit-days` on all rows before the block (less an
embargo of h bars, so no label reaches into the block): ridge regression on standardised
features (closed form, numpy), and a small multilayer perceptron (torch: 2 x 32 ReLU, Adam) as
the non-linear model. Out of sample, per model: R^2 against a zero forecast, the information
coefficient (rank correlation of forecast and outcome; for the assets, the mean cross-sectional
one) with a 90% block-bootstrap interval (blocks of max(7 days, 4h)), and the net result of
the simplest cost-aware rule, decided every h bars at the product's costs (`--cost-bps` a side:
25 bps taker fee + 5 bps slippage):
- market: hold the basket while the forecast is above +2c, cash while below -2c (c the cost a
  side: a round trip must pay), else keep; against holding the basket throughout;
- assets: hold the third of the assets with the best forecasts while their mean forecast beats
  the basket by more than 2c, else the basket; against the basket.
Figures are over the whole out-of-sample span and the three benchmark windows (bear 2022-05/06,
sideways 2023-07/08, bull 2023-10/12). A horizon "carries an edge that could pay the costs"
when its IC interval lies above 0 and the rule beats holding over the whole span and in at
least two of the three windows.

    python benchmarks/signal_ceiling.py                 # both asset sets, v1, ~3.5 min on 2 cores
    python benchmarks/signal_ceiling.py --assets default --horizons 1 24
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cappuccino_core.data import align  # noqa: E402
from cappuccino_core.data.csv_source import CsvSource  # noqa: E402
from cappuccino_core.data.features import compute_features  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h"
ASSETS = {"default": ["BTC/USD", "ETH/USD", "LTC/USD", "BCH/USD", "LINK/USD", "UNI/USD",
                      "AAVE/USD"],
          "other": ["ADA/USD", "AVAX/USD", "BNB/USD", "DOGE/USD", "SOL/USD", "XRP/USD"]}
WINDOWS = {"bear": ("2022-05-01", "2022-07-01"), "sideways": ("2023-07-01", "2023-09-01"),
           "bull": ("2023-10-01", "2024-01-01")}
HOURS_PER_YEAR = 24 * 365


# --- the models ----------------------------------------------------------------------------

def ridge(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, lam: float = 10.0) -> np.ndarray:
    """Ridge regression on features standardised with the training rows' statistics."""
    mu, sd = x.mean(0), x.std(0) + 1e-12
    z, z_new = (x - mu) / sd, (x_new - mu) / sd
    beta = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return y.mean() + z_new @ beta


def mlp(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, epochs: int = 3,
        seed: int = 0) -> np.ndarray:
    """A 2 x 32 ReLU perceptron (torch), inputs and target standardised, a few Adam epochs."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-12
    ys = y.std() + 1e-12
    xt = torch.as_tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.as_tensor((y - y.mean()) / ys, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(1024):
            opt.zero_grad()
            loss = ((net(xt[idx]).squeeze(-1) - yt[idx]) ** 2).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        out = net(torch.as_tensor((x_new - mu) / sd, dtype=torch.float32)).squeeze(-1)
    return y.mean() + out.numpy().astype(float) * ys


MODELS = {"ridge": ridge, "mlp": mlp}


def walk_forward(x: np.ndarray, y: np.ndarray, model, h: int, first: int,
                 refit: int) -> np.ndarray:
    """Out-of-sample forecasts `[t, ...]` (NaN before `first`): the model refit every `refit`
    bars on every earlier row whose label ended before the block (an embargo of h bars).
    `x[t, ..., f]`, `y[t, ...]`: the extra axes (assets) are pooled."""
    pred = np.full(y.shape, np.nan)
    for lo in range(first, len(y) - h, refit):
        hi = min(lo + refit, len(y) - h)
        train = slice(0, lo - h)
        xs, ys = x[train].reshape(-1, x.shape[-1]), y[train].reshape(-1)
        keep = np.isfinite(xs).all(1) & np.isfinite(ys)
        xn = x[lo:hi].reshape(-1, x.shape[-1])
        ok = np.isfinite(xn).all(1)
        out = np.full(len(xn), np.nan)
        if ok.any():
            out[ok] = model(xs[keep], ys[keep], xn[ok])
        pred[lo:hi] = out.reshape(y[lo:hi].shape)
    return pred


# --- the measures ----------------------------------------------------------------------------

def rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = pd.Series(a[ok]).rank().to_numpy(), pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:  # a constant forecast ranks nothing
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ic_series(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per bar: the cross-sectional rank IC (assets), or for one series the pairs themselves
    (the bootstrap then resamples pairs in blocks)."""
    return np.array([rank_corr(p, t) for p, t in zip(pred, y)])


def block_bootstrap(stat, n: int, block: int, reps: int = 500, seed: int = 0) -> tuple:
    """A 90% interval of `stat(index)` over `reps` resamples of contiguous blocks of rows."""
    rng = np.random.default_rng(seed)
    starts = np.arange(0, max(n - block, 1))
    k = max(n // block, 1)
    draws = []
    for _ in range(reps):
        idx = (rng.choice(starts, k)[:, None] + np.arange(block)[None, :]).reshape(-1)
        draws.append(stat(idx[idx < n]))
    return tuple(np.nanpercentile(draws, [5, 95]))


@dataclass
class Rule:
    """A cost-aware rule's and its reference's returns per decision (every h bars)."""
    rule: np.ndarray
    hold: np.ndarray
    turnover: float

    @property
    def excess(self) -> float:
        """The rule's log return less holding's, over the span."""
        return float(self.rule.sum() - self.hold.sum())

    def excess_per_year(self, h: int) -> float:
        return self.excess / max(len(self.rule) * h, 1) * HOURS_PER_YEAR


def market_rule(pred: np.ndarray, y: np.ndarray, h: int, cost: float) -> Rule:
    """In the basket above +2c, in cash below -2c, else as before; decided every h bars."""
    e, rets, holds, turn = 1.0, [], [], 0.0
    for t in range(0, len(y), h):
        if not np.isfinite(pred[t]) or not np.isfinite(y[t]):
            continue
        new = 1.0 if pred[t] > 2 * cost else 0.0 if pred[t] < -2 * cost else e
        rets.append(new * y[t] - cost * abs(new - e))
        holds.append(y[t])
        turn += abs(new - e)
        e = new
    return Rule(np.array(rets), np.array(holds), turn)


def asset_rule(pred: np.ndarray, fwd: np.ndarray, h: int, cost: float) -> Rule:
    """The best third of the assets while their mean forecast beats the basket by 2c, else
    the basket; decided every h bars; the basket as reference."""
    n = fwd.shape[1]
    k = max(n // 3, 1)
    w = np.full(n, 1.0 / n)
    rets, holds, turn = [], [], 0.0
    for t in range(0, len(fwd), h):
        if not (np.isfinite(pred[t]).all() and np.isfinite(fwd[t]).all()):
            continue
        best = np.argsort(pred[t])[-k:]
        new = np.full(n, 1.0 / n)
        if pred[t][best].mean() - pred[t].mean() > 2 * cost:
            new = np.zeros(n)
            new[best] = 1.0 / k
        moved = np.abs(new - w).sum()
        rets.append(float(new @ fwd[t]) - cost * moved)
        holds.append(float(fwd[t].mean()))
        turn += moved
        w = new
    return Rule(np.array(rets), np.array(holds), turn)


# --- the run ---------------------------------------------------------------------------------

def load(symbols: list[str], feature_set: str):
    src = CsvSource(DATA, "1h", 3600)
    lo, hi = pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC")
    bars = align({s: src.fetch(s, lo, hi) for s in symbols}, symbols, 3600)
    feats = compute_features(bars, feature_set)
    return bars, feats


def evaluate(bars, feats, horizons, refit_days: int, cost: float, warmup_days: int = 180):
    """Rows of the table: one per (target, horizon, model)."""
    logc = np.log(bars.close)
    rows = []
    first, refit = warmup_days * 24, refit_days * 24
    for h in horizons:
        fwd = np.full(logc.shape, np.nan)
        fwd[:-h] = logc[h:] - logc[:-h]
        market = fwd.mean(1)
        excess = fwd - market[:, None]
        block = max(168, 4 * h)
        for target, x, y in (("market", feats.mean(1), market), ("asset - market", feats, excess)):
            for name, model in MODELS.items():
                started = time.monotonic()
                pred = walk_forward(x, y, model, h, first, refit)
                oos = np.isfinite(pred).reshape(len(pred), -1).all(1) & \
                    np.isfinite(y).reshape(len(y), -1).all(1)
                idx = np.flatnonzero(oos)
                p, t = pred[idx], y[idx]
                r2 = 1 - np.nansum((t - p) ** 2) / np.nansum(t ** 2)
                if target == "market":
                    ic = rank_corr(p, t)
                    lo, hi = block_bootstrap(lambda i: rank_corr(p[i], t[i]), len(idx), block)
                    rule = lambda s: market_rule(pred[s], market[s], h, cost)  # noqa: E731
                else:
                    ics = ic_series(p, t)
                    ic = float(np.nanmean(ics))
                    lo, hi = block_bootstrap(lambda i: np.nanmean(ics[i]), len(idx), block)
                    rule = lambda s: asset_rule(pred[s], fwd[s], h, cost)  # noqa: E731
                whole = rule(slice(first, None))
                windows = {}
                for w, (a, b) in WINDOWS.items():
                    s = slice(*bars.index.searchsorted([pd.Timestamp(a, tz="UTC"),
                                                        pd.Timestamp(b, tz="UTC")]))
                    windows[w] = rule(s).excess if s.stop > s.start else float("nan")
                rows.append({"target": target, "h": h, "model": name, "r2": r2, "ic": ic,
                             "ic_lo": lo, "ic_hi": hi, "excess": whole.excess_per_year(h),
                             "turnover": whole.turnover, "windows": windows,
                             "seconds": time.monotonic() - started})
    return rows


def verdict(row: dict) -> bool:
    wins = sum(v > 0 for v in row["windows"].values() if np.isfinite(v))
    return row["ic_lo"] > 0 and row["excess"] > 0 and wins >= 2


def render(rows: list[dict], title: str) -> str:
    lines = [title, "(rule-hold: the rule's log return less holding's, a year over the whole "
             "span, in total over each window)",
             f"{'target':<15}{'h':>4} {'model':<6}{'R2 oos':>9}{'IC':>8}"
             f"{'IC 90% CI':>18}{'rule-hold/yr':>13}" + "".join(f"{w:>10}" for w in WINDOWS)
             + f"{'turnover':>10}  edge"]
    for r in rows:
        ci = f"[{r['ic_lo']:+.3f}, {r['ic_hi']:+.3f}]"
        lines.append(f"{r['target']:<15}{r['h']:>4} {r['model']:<6}{r['r2']:>+9.4f}"
                     f"{r['ic']:>+8.3f}{ci:>18}{r['excess']:>+12.1%} "
                     + "".join(f"{v:>+10.1%}" for v in r["windows"].values())
                     + f"{r['turnover']:>10.1f}  {'YES' if verdict(r) else 'no'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", choices=["default", "other", "both"], default="both")
    ap.add_argument("--features", default="v1")
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 24, 168])
    ap.add_argument("--refit-days", type=int, default=30)
    ap.add_argument("--cost-bps", type=float, default=30.0, help="cost a side (fee + slippage)")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: this benchmark needs the shared real data")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    sets = ["default", "other"] if args.assets == "both" else [args.assets]
    found = []
    for name in sets:
        started = time.monotonic()
        bars, feats = load(ASSETS[name], args.features)
        rows = evaluate(bars, feats, args.horizons, args.refit_days, args.cost_bps * 1e-4)
        print(render(rows, f"\n{name} assets ({', '.join(ASSETS[name])}), features "
                           f"{args.features}, {bars.index[0]:%Y-%m-%d} .. "
                           f"{bars.index[-1]:%Y-%m-%d}, out of sample after 180 days, refit "
                           f"every {args.refit_days} days, cost {args.cost_bps:g} bps a side "
                           f"({time.monotonic() - started:.0f} s)"))
        found += [f"{name}: {r['target']} {r['h']} h ({r['model']})" for r in rows
                  if verdict(r)]
    print("\nedge that could pay the costs (IC interval above 0, the rule beats holding over "
          "the whole span and in 2 of 3 windows): " + ("; ".join(found) or "NONE"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
