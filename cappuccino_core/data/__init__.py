"""Layer 3, market data: sources, the cache, alignment and the closed-bar rule, features,
samples. May import: common, storage, broker (Alpaca's HTTP client).

`load_bars(cfg, ...)` is what every part of the product calls: it reads the configured source
through the cache and returns aligned, validated, closed `Bars`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..common.config import Config
from .bars import Bars, DataError, align, closed_end, only_closed, validate
from .cache import BarCache
from .csv_source import CsvSource

SAMPLE_DIR = Path(str(files("cappuccino_core") / "sample_data"))
EARLIEST = pd.Timestamp("2015-01-01", tz="UTC")

__all__ = ["Bars", "DataError", "align", "closed_end", "only_closed", "validate", "load_bars",
           "make_source", "make_cache", "SAMPLE_DIR"]


def make_source(cfg: Config, source: str | None = None, csv_path: str | None = None):
    """The bar source named by `source` (default: the config's), without keys unless given."""
    kind = source or cfg.data.source
    if kind == "csv":
        return CsvSource(csv_path or cfg.data.csv_path or SAMPLE_DIR, cfg.data.timeframe,
                         cfg.bar_seconds, cfg.data.max_bar_jump)
    if kind == "alpaca":
        from .alpaca_source import AlpacaSource  # the SDK only where Alpaca is used
        return AlpacaSource(cfg.bar_seconds, url_override=cfg.broker.url_override,
                            api_key=cfg.broker.api_key_id, secret_key=cfg.broker.api_secret_key,
                            max_jump=cfg.data.max_bar_jump)
    raise DataError(f"unknown data source {kind!r}")


def venue(cfg: Config) -> str:
    """Where the configured bars come from, in words (recorded with every trained model, so
    that a model trained on one venue's bars and traded on another's is noticed)."""
    if cfg.data.source == "alpaca":
        return "Alpaca crypto bars (USD quotes)"
    path = Path(cfg.data.csv_path or SAMPLE_DIR)
    quotes = set()
    try:
        source = CsvSource(path, cfg.data.timeframe, cfg.bar_seconds)
    except DataError:
        source = None
    for s in cfg.data.symbols if source else []:
        try:
            name = source.file_for(s).name
        except DataError:
            continue
        quotes.add(name.split("_")[0].removeprefix(s.split("/")[0]))
    sample = " (the bundled Binance sample)" if path == SAMPLE_DIR else ""
    return f"CSV bars in {path}{sample} ({'/'.join(sorted(quotes)) or '?'} quotes)"


def make_cache(cfg: Config, source) -> BarCache:
    return BarCache(cfg.cache_dir / "bars", source, cfg.data.timeframe, cfg.bar_seconds,
                    cfg.data.closed_bar_delay_s, refetch_bars=cfg.data.refetch_bars)


def to_utc(value: str | pd.Timestamp | None, default: pd.Timestamp) -> pd.Timestamp:
    if value is None:
        return default
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def fetch_into_cache(cache: BarCache, symbols: list[str], start: pd.Timestamp, end: pd.Timestamp,
                     now: pd.Timestamp, progress: bool = False) -> dict[str, int]:
    """Fill the cache for every symbol; returns the number of new bars per symbol."""
    cache.clear_leftovers()
    plan = {s: cache.chunks(s, start, end, now) for s in symbols}
    bar = tqdm(total=sum(len(c) for c in plan.values()), unit="chunk", disable=not progress,
               desc="fetching bars")
    added = {}
    with bar:
        for symbol, chunks in plan.items():
            added[symbol] = 0
            bar.set_postfix_str(symbol)
            for lo, hi in chunks:
                added[symbol] += cache.fill_chunk(symbol, lo, hi)
                bar.update(1)
    return added


def load_bars(cfg: Config, start: str | pd.Timestamp | None = None,
              end: str | pd.Timestamp | None = None, now: pd.Timestamp | None = None,
              symbols: list[str] | None = None, progress: bool = False) -> Bars:
    """Closed, validated, aligned bars of the configured symbols with open time in [start, end)
    (default: `data.start`, `data.end`, else all there is up to now).

    Missing ranges are fetched from the configured source into the cache first."""
    now = to_utc(now, pd.Timestamp.now(tz="UTC"))
    start = to_utc(start if start is not None else cfg.data.start, EARLIEST)
    end = to_utc(end if end is not None else cfg.data.end, now)
    symbols = list(symbols or cfg.data.symbols)
    cache = make_cache(cfg, make_source(cfg))
    fetch_into_cache(cache, symbols, start, end, now, progress)
    frames = {s: cache.read(s, start, end, now) for s in symbols}
    return align(frames, symbols, cfg.bar_seconds, cfg.data.max_gap_bars)
