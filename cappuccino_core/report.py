"""`cappuccino report`: one self-contained HTML file (inline SVG charts, no network).

Sections: the paper trader (equity against equal-weight buy-and-hold over the same bars,
drawdown, position weights over time, recent trades), a backtest of the current ensemble over
the active study's held-out window (the same charts, the metrics, and each member's own
result with its blend weight), and the study's optimisation history.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .config import Config
from .data import load_bars
from .data.features import compute_features
from .backtest import backtest_ensemble, first_decision_bar
from .ensemble.publish import current_dir, ensembles_dir
from .ensemble.serving import Ensemble
from .optuna_db import complete_values
from .storage import equity_snapshots, orders
from .trading.journal import pick_trader
from .window import WindowError, held_out_start, resolve_window

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def svg_chart(title: str, series: dict[str, tuple[np.ndarray, np.ndarray]], y_label: str = "",
              width: int = 900, height: int = 260, dots: bool = False) -> str:
    """A line (or dot) chart of named (x, y) series, as inline SVG."""
    series = {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in series.items()
              if len(x)}
    if not series:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    xs = np.concatenate([x for x, _ in series.values()])
    ys = np.concatenate([y for _, y in series.values()])
    ys = ys[np.isfinite(ys)]
    x0, x1 = xs.min(), xs.max() if xs.max() > xs.min() else xs.min() + 1
    y0, y1 = (ys.min(), ys.max()) if len(ys) else (0, 1)
    if y1 <= y0:
        y0, y1 = y0 - 1, y1 + 1
    pad_l, pad_r, pad_t, pad_b = 70, 160, 28, 24
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x, y):
        return pad_l + (x - x0) / (x1 - x0) * w, pad_t + (1 - (y - y0) / (y1 - y0)) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">'
             f'{html.escape(title)}</text>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    for frac in (0, 0.5, 1):
        yv = y0 + frac * (y1 - y0)
        _, yy = px(x0, yv)
        parts.append(f'<text x="{pad_l - 6}" y="{yy + 4:.1f}" text-anchor="end">{yv:,.3g}</text>')
    parts.append(f'<text x="12" y="{pad_t + h / 2}" transform="rotate(-90 12 {pad_t + h / 2})">'
                 f'{html.escape(y_label)}</text>')
    for i, (name, (x, y)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        step = max(1, len(x) // 1500)  # keep the file small
        pts = [px(a, b) for a, b in zip(x[::step], y[::step]) if np.isfinite(b)]
        if dots:
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2" fill="{colour}"/>' for a, b in pts]
        else:
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.4" '
                         f'points="{d}"/>')
        parts.append(f'<text x="{pad_l + w + 10}" y="{pad_t + 14 + 14 * i}" fill="{colour}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _drawdown(equity: np.ndarray) -> np.ndarray:
    return equity / np.maximum.accumulate(equity) - 1


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                  for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def paper_section(engine: Engine, bars, name: str | None, note: str = "") -> str:
    if name is None:
        return f"<h2>Paper trading</h2><p>{html.escape(note)}</p>"
    with engine.connect() as conn:
        snaps = conn.execute(sa.select(equity_snapshots).where(
            equity_snapshots.c.trader == name).order_by(equity_snapshots.c.id)).all()
        recent = conn.execute(sa.select(orders).where(orders.c.trader == name)
                              .order_by(orders.c.id.desc()).limit(50)).all()
    if len(snaps) < 2:
        return (f"<h2>Paper trading ({html.escape(name)})</h2><p>No equity history yet. "
                f"{html.escape(note)}</p>")
    ts = pd.DatetimeIndex([pd.Timestamp(s.ts) for s in snaps]).tz_localize(None)
    equity = np.array([s.equity for s in snaps])
    index = bars.index.tz_localize(None)
    rows = np.clip(index.searchsorted(ts) - 1, 0, len(bars) - 1)
    close = bars.close[rows]
    bench = equity[0] * (close / close[0]).mean(axis=1)
    days = (ts - ts[0]).total_seconds() / 86400
    weights = {sym: (days, np.array([s.positions.get(sym, 0.0) for s in snaps]) * close[:, a]
                     / equity) for a, sym in enumerate(bars.symbols)}
    trades = [[f"{r.bar_time:%Y-%m-%d %H:%M}", r.symbol, r.side, r.reason, f"{r.filled_qty:.8g}",
               f"{r.filled_avg_price:.6g}" if r.filled_avg_price else "-", f"{r.fee:.2f}",
               r.status] for r in recent]
    return (f"<h2>Paper trading ({html.escape(name)})</h2><p>{html.escape(note)}</p>"
            f"<p>{ts[0]:%Y-%m-%d %H:%M} .. {ts[-1]:%Y-%m-%d %H:%M} UTC: starting capital "
            f"{equity[0]:,.2f}, final equity <b class='paper-final'>{equity[-1]:,.2f}</b> "
            f"({equity[-1] / equity[0] - 1:+.2%}); "
            f"equal-weight buy-and-hold {bench[-1] / bench[0] - 1:+.2%}.</p>"
            + svg_chart("Equity vs equal-weight buy-and-hold (days)",
                        {"paper trader": (days, equity), "buy-and-hold": (days, bench)}, "USD")
            + svg_chart("Drawdown", {"paper trader": (days, _drawdown(equity)),
                                     "buy-and-hold": (days, _drawdown(bench))}, "fraction")
            + svg_chart("Position weights", weights, "of equity")
            + "<h3>Recent trades</h3>"
            + _table(["bar", "symbol", "side", "reason", "qty", "price", "fee", "status"],
                     trades))


def backtest_section(cfg: Config, engine: Engine, bars, features, start=None, end=None) -> str:
    path = current_dir(ensembles_dir(cfg))
    if path is None:
        return "<h2>Backtest</h2><p>No ensemble published yet.</p>"
    ens = Ensemble.load(path, cfg)
    try:
        window = resolve_window(bars, start, end, first_decision_bar(ens),
                                held_out_start(engine, ens.study), ens.study)
    except WindowError as e:
        return f"<h2>Backtest</h2><p>{html.escape(str(e))}</p>"
    lo, hi = window.lo, window.hi
    res = backtest_ensemble(cfg, ens, bars, features, lo, hi)
    days = np.arange(len(res.equity)) / 24
    m = res.metrics()
    metrics = [[k.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else v]
               for k, v in m.items()]
    members = []
    for member, weight in zip(ens.members, ens.blend):
        alone = Ensemble.of_member(member, ens.study, path)
        r = backtest_ensemble(cfg, alone, bars, features, lo, hi).metrics()
        members.append([member.number, member.trial_id, f"{member.value:.3f}", f"{weight:.2f}",
                        f"{r['total_return']:+.2%}", f"{r['sharpe']:.2f}"])
    weights = {s: (days[1:], res.weights[:, a]) for a, s in enumerate(bars.symbols)}
    return (f"<h2>Backtest: ensemble v{ens.version}</h2>"
            f"<p>{html.escape(str(window))}, same environment, live risk rules (trailing stop "
            f"{cfg.risk.trailing_stop_pct:.0%}): starting capital {res.equity[0]:,.2f}, final "
            f"equity <b class='backtest-final'>{res.equity[-1]:,.2f}</b> "
            f"({res.equity[-1] / res.equity[0] - 1:+.2%}).</p>"
            + svg_chart("Equity vs equal-weight buy-and-hold (days)",
                        {"ensemble": (days, res.equity),
                         "buy-and-hold": (days, res.benchmark_equity)}, "USD")
            + svg_chart("Drawdown", {"ensemble": (days, _drawdown(res.equity)),
                                     "buy-and-hold": (days, _drawdown(res.benchmark_equity))},
                        "fraction")
            + svg_chart("Target position weights", weights, "of equity")
            + "<h3>Metrics</h3>" + _table(["metric", "value"], metrics)
            + "<h3>Members: each alone on the same window, and its blend weight</h3>"
            + _table(["trial", "id", "value", "blend weight", "return alone", "Sharpe alone"],
                     members))


def history_section(engine: Engine, study: str | None) -> str:
    rows = complete_values(engine, study) if study else []
    if not rows:
        return "<h2>Optimisation history</h2><p>No complete trial yet.</p>"
    n = np.array([r[0] for r in rows], float)
    v = np.array([r[1] for r in rows], float)
    return (f"<h2>Optimisation history: study {html.escape(study)}</h2>"
            + svg_chart("Trial values", {"trial value": (n, v)}, "objective", dots=True)
            + svg_chart("Best so far", {"best value": (n, np.maximum.accumulate(v))},
                        "objective"))


def write_report(cfg: Config, engine: Engine, out: str | Path, trader: str | None = None,
                 start=None, end=None) -> Path:
    """The report: `trader`'s paper trading (default: see `pick_trader`), a backtest of the
    current ensemble over the window `start`/`end` (default its study's held-out window), and
    the optimisation history."""
    bars = load_bars(cfg)
    features = compute_features(bars)
    name, note = pick_trader(engine, trader)
    body = (paper_section(engine, bars, name, note)
            + backtest_section(cfg, engine, bars, features, start, end)
            + history_section(engine, cfg.active_study))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Cappuccino report</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;"
            "padding:2px 6px;text-align:right}svg{display:block;margin:8px 0}</style></head>"
            f"<body><h1>Cappuccino report</h1><p>Generated {generated}; active study "
            f"{html.escape(str(cfg.active_study))}.</p>{body}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
