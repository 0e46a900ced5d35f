"""The trading loop's own cost, without the network.

1. Decision time per bar: the live path for one closed bar (features over the live history,
   10-member ensemble, risk rules, order plan, orders to the simulated broker, journal,
   stops, equity snapshot), median over bars. Target <= 50 ms.
2. A replay of one year of hourly bars (the bundled sample, 7 assets) with a 10-member
   ensemble through the same loop and the SimBroker. Target < 60 s.

Members are real artifacts of the default network size (2 x 128) whose no-trade bands spread
over the search space's range (0.02 .. 0.2), as trained members' do.

    python benchmarks/trading_loop.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ensemble_helpers import add_trial  # noqa: E402

from cappuccino_core.broker.sim import SimBroker  # noqa: E402
from cappuccino_core.common.config import load_config  # noqa: E402
from cappuccino_core.data import load_bars  # noqa: E402
from cappuccino_core.data.features import LIVE_HISTORY, compute_features  # noqa: E402
from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir  # noqa: E402
from cappuccino_core.ensemble.publish import sync  # noqa: E402
from cappuccino_core.ensemble.serving import Ensemble  # noqa: E402
from cappuccino_core.storage.database import make_optuna_storage, open_app_db  # noqa: E402
from cappuccino_core.trading.replay import replay  # noqa: E402
from cappuccino_core.trading.trader import Trader  # noqa: E402


def setup(tmp: Path):
    (tmp / "etc").mkdir(parents=True)
    (tmp / "etc" / "cappuccino.yaml").write_text(f"paths: {{state_dir: {tmp / 'state'}}}\n")
    (tmp / "etc" / "active_study.yaml").write_text("study: bench\n")
    cfg = load_config(tmp / "etc")
    engine = open_app_db(cfg.storage_url)
    study = optuna.create_study(study_name="bench", storage=make_optuna_storage(cfg.storage_url),
                                direction="maximize")
    for i in range(10):
        add_trial(study, cfg, 0.1 * i, lookback=[1, 2, 4, 8][i % 4], seed=i, hidden=128,
                  layers=2, band=0.02 + 0.02 * i)
    sync(cfg, engine)
    return cfg, engine


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import logging
    logging.disable(logging.WARNING)
    cfg, engine = setup(Path(tempfile.mkdtemp(prefix="cappuccino-bench-")))
    bars = load_bars(cfg)
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    broker = SimBroker.from_config(cfg, engine)
    trader = Trader(cfg, broker, engine, "bench", ens)
    trader.start()
    times = []
    for t in range(LIVE_HISTORY + 10, LIVE_HISTORY + 210):
        window = bars.slice(t - LIVE_HISTORY + 1, t + 1)
        broker.mark(dict(zip(bars.symbols, bars.close[t])))
        t0 = time.perf_counter()
        trader.on_bar(bars.index[t], compute_features(window, "v1"),
                      bars.index[t] + pd.Timedelta(hours=1, seconds=10))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times) * 1e3
    print(f"decision per bar (features over {LIVE_HISTORY} bars, 10 members, plan, orders, "
          f"journal): median {median:.1f} ms, p95 "
          f"{sorted(times)[int(0.95 * len(times))] * 1e3:.1f} ms "
          f"(target <= 50 ms: {'met' if median <= 50 else 'NOT met'})")

    cfg2, engine2 = setup(Path(tempfile.mkdtemp(prefix="cappuccino-bench-")))
    t0 = time.perf_counter()
    result = replay(cfg2, engine2)
    wall = time.perf_counter() - t0
    print(f"replay of {result.bars:,} hourly bars ({result.window.first:%Y-%m-%d} .. "
          f"{result.window.last:%Y-%m-%d}, 7 assets, 10 members): {wall:.1f} s "
          f"(target < 60 s for a year: {'met' if wall < 60 else 'NOT met'})")


if __name__ == "__main__":
    main()
