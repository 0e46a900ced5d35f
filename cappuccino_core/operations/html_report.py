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
from sqlalchemy.engine import Engine

from ..common.config import Config
from ..common.files import atomic_write_text
from ..ensemble.evaluation import MarketData, evaluate
from ..ensemble.manifest import current_dir, ensembles_dir
from ..ensemble.serving import Ensemble
from ..rl.window import WindowError
from ..storage.optuna_db import complete_values
from ..trading.journal import Journal, pick_trader
from ..trading.trader_views import fill_pnls

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def fmt_money(v: float) -> str:
    """1,234 / 12.3k / 1.23M: an axis a person reads at a glance."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:,.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:,.1f}k"
    return f"{v:,.0f}" if a >= 100 else f"{v:,.2f}"


def fmt_percent(v: float) -> str:
    return f"{v * 100:+.1f}%" if v else "0%"


Y_FORMATS = {"money": fmt_money, "percent": fmt_percent, "number": lambda v: f"{v:,.3g}"}


def _time_ticks(x0: float, x1: float, n: int = 6) -> list[tuple[float, str]]:
    """Ticks over epoch seconds, labelled by date (and hour when the span is short)."""
    span = max(x1 - x0, 1.0)
    fmt = "%Y-%m-%d" if span > 3 * 86400 else "%m-%d %H:%M"
    return [(x0 + span * k / (n - 1),
             pd.Timestamp(x0 + span * k / (n - 1), unit="s").strftime(fmt)) for k in range(n)]


def _number_ticks(x0: float, x1: float, n: int = 6) -> list[tuple[float, str]]:
    values = sorted({round(x0 + (x1 - x0) * k / (n - 1)) for k in range(n)})
    return [(float(v), f"{v:,}") for v in values]


def svg_chart(title: str, series: dict[str, tuple[np.ndarray, np.ndarray]], y_label: str = "",
              width: int = 900, height: int = 280, dots: bool = False, x_kind: str = "time",
              x_label: str = "", y_format: str = "number") -> str:
    """A line (or dot) chart of named (x, y) series as inline SVG, with labelled axes (dates on
    a time axis, k/M or percent on the values) and a legend. On a time axis, x is in epoch
    seconds."""
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
    pad_l, pad_r, pad_t, pad_b = 78, 170, 30, 44
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    y_fmt = Y_FORMATS[y_format]
    x_label = x_label or ("date (UTC)" if x_kind == "time" else "")

    def px(x, y):
        return pad_l + (x - x0) / (x1 - x0) * w, pad_t + (1 - (y - y0) / (y1 - y0)) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{pad_l}" y="18" font-size="13" font-weight="bold">'
             f'{html.escape(title)}</text>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>',
             '<g class="y-axis">']
    for k in range(5):
        yv = y0 + k / 4 * (y1 - y0)
        _, yy = px(x0, yv)
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{yy:.1f}" y2="{yy:.1f}" '
                     f'stroke="#eee"/><text x="{pad_l - 6}" y="{yy + 4:.1f}" '
                     f'text-anchor="end">{html.escape(y_fmt(yv))}</text>')
    parts.append(f'<text class="axis-label" x="14" y="{pad_t + h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {pad_t + h / 2})">{html.escape(y_label)}</text></g>')
    parts.append('<g class="x-axis">')
    ticks = _time_ticks(x0, x1) if x_kind == "time" else _number_ticks(x0, x1)
    for xv, text in ticks:
        xx, _ = px(xv, y0)
        parts.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{pad_t + h}" y2="{pad_t + h + 4}" '
                     f'stroke="#999"/><text x="{xx:.1f}" y="{pad_t + h + 16}" '
                     f'text-anchor="middle">{html.escape(text)}</text>')
    parts.append(f'<text class="axis-label" x="{pad_l + w / 2}" y="{height - 6}" '
                 f'text-anchor="middle">{html.escape(x_label)}</text></g>')
    legend = ['<g class="legend">']
    for i, (name, (x, y)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        step = max(1, len(x) // 1500)  # keep the file small
        pts = [px(a, b) for a, b in zip(x[::step], y[::step]) if np.isfinite(b)]
        if dots:
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{colour}"/>'
                      for a, b in pts]
        else:
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.4" '
                         f'points="{d}"/>')
        ly = pad_t + 12 + 16 * i
        legend.append(f'<rect x="{pad_l + w + 10}" y="{ly - 8}" width="10" height="10" '
                      f'fill="{colour}"/><text x="{pad_l + w + 24}" y="{ly + 1}">'
                      f'{html.escape(name)}</text>')
    return "".join(parts + legend + ["</g></svg>"])


PERCENT_METRICS = {"total_return", "max_drawdown", "bh_total_return", "bh_max_drawdown"}


def _metric(key: str, value) -> str:
    """Returns and drawdowns in percent, ratios to two decimals, money with separators."""
    if key in PERCENT_METRICS:
        return f"{value:+.2%}" if "return" in key else f"{value:.2%}"
    if key == "fees":
        return f"{value:,.2f}"
    if key == "turnover":
        return f"{value:.1f}x"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _drawdown(equity: np.ndarray) -> np.ndarray:
    return equity / np.maximum.accumulate(equity) - 1


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                  for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _epoch(index) -> np.ndarray:
    """Timestamps as epoch seconds (what a time axis takes)."""
    return pd.DatetimeIndex(index).as_unit("ns").asi8 / 1e9


def trade_pnl(fill_rows) -> list[list]:
    """Each fill with its realised P&L (`trader_views.fill_pnls`), newest first."""
    return [[f"{pd.Timestamp(r.bar_time):%Y-%m-%d %H:%M}", r.symbol, r.side, f"{r.qty:.8g}",
             f"{r.price:,.6g}", f"{r.fee:,.2f}", f"{pnl:+,.2f}"]
            for r, pnl in zip(fill_rows, fill_pnls(fill_rows))][::-1]


def positions_table(engine: Engine, cfg: Config, name: str, snapshot, close_now) -> str:
    """Current positions with their entry, peak and the level their stop fires at."""
    state = Journal(engine, name).load_state()
    trail, loss = cfg.risk.trailing_stop_pct, cfg.risk.stop_loss_pct
    rows = []
    for symbol, qty in sorted(snapshot.positions.items()):
        s = state.stops.get(symbol, {})
        level = max(s.get("peak", 0) * (1 - trail) if trail else 0,
                    s.get("entry", 0) * (1 - loss) if loss else 0)
        price = close_now.get(symbol)
        rows.append([symbol, f"{qty:.8g}", f"{s.get('entry', 0):,.6g}", f"{s.get('peak', 0):,.6g}",
                     f"{level:,.6g}", f"{price:,.6g}" if price else "-",
                     f"{price / level - 1:+.1%}" if price and level else "-"])
    if not rows:
        return "<p>No open position.</p>"
    return _table(["symbol", "qty", "entry", "peak", "stop level", "last close",
                   "room to the stop"], rows)


def paper_section(engine: Engine, bars, name: str | None, note: str = "",
                  cfg: Config | None = None) -> str:
    if name is None:
        return f"<h2>Paper trading</h2><p>{html.escape(note)}</p>"
    journal = Journal(engine, name)
    snaps, fill_rows = journal.equity_rows(), journal.fill_rows()
    if len(snaps) < 2:
        return (f"<h2>Paper trading ({html.escape(name)})</h2><p>No equity history yet. "
                f"{html.escape(note)}</p>")
    ts = pd.DatetimeIndex([pd.Timestamp(s.ts) for s in snaps]).tz_localize(None)
    equity = np.array([s.equity for s in snaps])
    index = bars.index.tz_localize(None)
    rows = np.clip(index.searchsorted(ts) - 1, 0, len(bars) - 1)
    close = bars.close[rows]
    bench = equity[0] * (close / close[0]).mean(axis=1)
    t = _epoch(ts)
    weights = {sym: (t, np.array([s.positions.get(sym, 0.0) for s in snaps]) * close[:, a]
                     / equity) for a, sym in enumerate(bars.symbols)}
    positions = (positions_table(engine, cfg, name, snaps[-1],
                                 dict(zip(bars.symbols, map(float, close[-1]))))
                 if cfg is not None else "")
    return (f"<h2>Paper trading ({html.escape(name)})</h2><p>{html.escape(note)}</p>"
            f"<p>{ts[0]:%Y-%m-%d %H:%M} .. {ts[-1]:%Y-%m-%d %H:%M} UTC: starting capital "
            f"{equity[0]:,.2f}, final equity <b class='paper-final'>{equity[-1]:,.2f}</b> "
            f"({equity[-1] / equity[0] - 1:+.2%}); "
            f"equal-weight buy-and-hold {bench[-1] / bench[0] - 1:+.2%}.</p>"
            + svg_chart("Equity vs equal-weight buy-and-hold",
                        {"paper trader": (t, equity), "buy-and-hold": (t, bench)}, "equity (USD)",
                        y_format="money")
            + svg_chart("Drawdown", {"paper trader": (t, _drawdown(equity)),
                                     "buy-and-hold": (t, _drawdown(bench))},
                        "below the peak", y_format="percent")
            + svg_chart("Position weights", weights, "of equity", y_format="percent")
            + "<h3>Open positions and their stops</h3>" + positions
            + "<h3>Recent trades (realised P&amp;L at average cost, after fees)</h3>"
            + _table(["bar", "symbol", "side", "qty", "price", "fee", "P&L"],
                     trade_pnl(fill_rows)[:50]))


def backtest_section(cfg: Config, engine: Engine, market: MarketData, start=None,
                     end=None) -> str:
    path = current_dir(ensembles_dir(cfg))
    if path is None:
        return "<h2>Backtest</h2><p>No ensemble published yet.</p>"
    ens = Ensemble.load(path, cfg)
    alone = [Ensemble.of_member(member, ens.study, path) for member in ens.members]
    try:  # the ensemble, and each member alone over the same bars
        evaluation = evaluate(cfg, engine, [ens] + alone, ens.study, start, end, market)
    except WindowError as e:
        return f"<h2>Backtest</h2><p>{html.escape(str(e))}</p>"
    window, (res, *member_results) = evaluation.window, evaluation.results
    bars, lo = market.bars, window.lo
    t = _epoch(bars.index[lo:lo + len(res.equity)]) + cfg.bar_seconds  # at each bar's close
    metrics = [[k.replace("_", " "), _metric(k, v)] for k, v in res.metrics().items()]
    members = []
    for member, weight, result in zip(ens.members, ens.blend, member_results):
        r = result.metrics()
        members.append([member.number, member.trial_id, f"{member.value:.3f}", f"{weight:.2f}",
                        f"{r['total_return']:+.2%}", f"{r['sharpe']:.2f}"])
    weights = {s: (t[1:], res.weights[:, a]) for a, s in enumerate(bars.symbols)}
    trail = cfg.risk.trailing_stop_pct
    stop_rule = f"trailing stop {trail:.0%}" if trail else "no trailing stop"
    fallback = ("" if ens.fallback is None else
                f"<p class='fallback'><b>No agent is good enough: v{ens.version} is the fallback "
                f"({html.escape(ens.fallback)})</b>: {html.escape(ens.fallback_reason or '')}</p>")
    return (f"<h2>Backtest: ensemble v{ens.version}</h2>{fallback}"
            f"<p>{html.escape(str(window))}, same environment, live risk rules ({stop_rule}): "
            f"starting capital {res.equity[0]:,.2f}, final "
            f"equity <b class='backtest-final'>{res.equity[-1]:,.2f}</b> "
            f"({res.equity[-1] / res.equity[0] - 1:+.2%}).</p>"
            + svg_chart("Equity vs equal-weight buy-and-hold",
                        {"ensemble": (t, res.equity), "buy-and-hold": (t, res.benchmark_equity)},
                        "equity (USD)", y_format="money")
            + svg_chart("Drawdown", {"ensemble": (t, _drawdown(res.equity)),
                                     "buy-and-hold": (t, _drawdown(res.benchmark_equity))},
                        "below the peak", y_format="percent")
            + svg_chart("Target position weights", weights, "of equity", y_format="percent")
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
    best = int(n[int(np.argmax(v))])
    top = sorted(rows, key=lambda r: -r[1])[:10]
    return (f"<h2>Optimisation history: study {html.escape(study)}</h2>"
            f"<p>{len(rows)} complete trials; the best is trial {best} ({v.max():.3f}).</p>"
            + svg_chart("Trial values", {"trial value": (n, v)}, "objective value", dots=True,
                        x_kind="number", x_label="trial number")
            + svg_chart("Best so far", {"best value": (n, np.maximum.accumulate(v))},
                        "objective value", x_kind="number", x_label="trial number")
            + "<h3>Best trials</h3>"
            + _table(["trial number", "value"], [[k, f"{x:.4f}"] for k, x in top]))


def reconcile_section(cfg: Config, engine: Engine, name: str | None) -> str:
    """Live vs replay (`cappuccino reconcile`) over the trader's recorded decisions."""
    from ..trading.reconcile import CAUSES, ReconcileError, reconcile
    if name is None:
        return ""
    try:
        rec = reconcile(cfg, engine, name)
    except ReconcileError as e:
        return f"<h2>Live vs replay</h2><p>{html.escape(str(e))}</p>"
    totals = rec.totals()
    t = _epoch(pd.DatetimeIndex([r.bar for r in rec.rows]).tz_localize(None))
    live = np.array([r.live_equity for r in rec.rows])
    replayed = np.array([r.replay_equity for r in rec.rows])
    return (f"<h2>Live vs replay ({html.escape(name)})</h2><p>The trader's recorded decisions "
            "replayed through the backtest environment from its recorded account; every "
            f"difference put on its cause (<code>cappuccino reconcile --name {html.escape(name)}"
            f"</code> shows every bar). Difference at the end: <b class='reconcile-total'>"
            f"{rec.difference:+,.2f}</b>.</p>"
            + svg_chart("Equity: live and replayed", {"live": (t, live), "replay": (t, replayed)},
                        "equity (USD)", y_format="money")
            + _table(["cause", "amount"], [[c, f"{totals[c]:+,.2f}"]
                                           for c in (*CAUSES, "unexplained")])
            + "<h3>Largest differences</h3>"
            + _table(["bar", "symbol", "cause", "amount", "what"],
                     [[f"{x['bar']:%Y-%m-%d %H:%M}", x["symbol"], x["cause"],
                       f"{x['amount']:+,.2f}", x["what"]] for x in rec.largest]))


def write_report(cfg: Config, engine: Engine, out: str | Path, trader: str | None = None,
                 start=None, end=None) -> Path:
    """The report: `trader`'s paper trading (default: see `pick_trader`), a backtest of the
    current ensemble over the window `start`/`end` (default its study's held-out window), and
    the optimisation history."""
    market = MarketData.load(cfg)
    name, note = pick_trader(engine, trader)
    body = (paper_section(engine, market.bars, name, note, cfg)
            + reconcile_section(cfg, engine, name)
            + backtest_section(cfg, engine, market, start, end)
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
    return atomic_write_text(out, page)
