"""One ensemble decision: 10 members, 7 assets, on the CPU. Target <= 5 ms.

Members are real artifacts (default network: 2 x 128, lookbacks 1..8, each with its own
normalisation), published and loaded the way the trader loads them. Timed: the ensemble's
target weights from a window of features (normalisation, observation and forward pass of
every member, blend). Printed beside it: the feature computation over the live history,
which the trader does once per bar whatever the ensemble size.

    python benchmarks/ensemble_decision.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ensemble_helpers import add_trial  # noqa: E402

from cappuccino_core.common.config import load_config  # noqa: E402
from cappuccino_core.data import load_bars  # noqa: E402
from cappuccino_core.data.features import LIVE_HISTORY, compute_features  # noqa: E402
from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir  # noqa: E402
from cappuccino_core.ensemble.publish import sync  # noqa: E402
from cappuccino_core.ensemble.serving import Ensemble  # noqa: E402
from cappuccino_core.storage.database import make_optuna_storage, open_app_db  # noqa: E402


def median_ms(fn, repeat=200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # the trader's decision runs on one core
    tmp = Path(tempfile.mkdtemp(prefix="cappuccino-bench-"))
    (tmp / "etc").mkdir()
    (tmp / "etc" / "cappuccino.yaml").write_text(f"paths: {{state_dir: {tmp / 'state'}}}\n")
    (tmp / "etc" / "active_study.yaml").write_text("study: bench\n")
    cfg = load_config(tmp / "etc")
    storage = make_optuna_storage(cfg.storage_url)
    study = optuna.create_study(study_name="bench", storage=storage, direction="maximize")
    for i in range(10):
        add_trial(study, cfg, value=0.1 * i, lookback=[1, 2, 4, 8][i % 4], seed=i, hidden=128,
                  layers=2)
    sync(cfg, open_app_db(cfg.storage_url))
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    bars = load_bars(cfg)
    window = bars.slice(len(bars) - LIVE_HISTORY, len(bars))
    feats = compute_features(window, "v1")
    positions = np.full(len(bars.symbols), 0.1)
    decision = median_ms(lambda: ens.target_weights(feats, positions, 0.3))
    features_ms = median_ms(lambda: compute_features(window, "v1"), repeat=30)
    print(f"ensemble: {len(ens.members)} members, {len(bars.symbols)} assets, lookbacks "
          f"{sorted({m.lookback for m in ens.members})}, 1 CPU thread")
    print(f"one ensemble decision: {decision:.2f} ms (target <= 5 ms: "
          f"{'met' if decision <= 5 else 'NOT met'})")
    print(f"features over the live history ({LIVE_HISTORY} bars, once per bar): "
          f"{features_ms:.1f} ms")


if __name__ == "__main__":
    main()
