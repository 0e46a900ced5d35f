"""The validation gate: promote a new best model only if it wins out of sample.

The candidate is the active study's best eligible trial. It is backtested, alone, over the
study's held-out window (`train_end` onwards: bars no trial was trained or cross-validated on)
in the same environment with the live risk rules, and so is the current ensemble. Gates, from
`deploy` in cappuccino.yaml:

- probability of backtest overfitting (CSCV over the per-split results of the study's top
  trials) <= `max_pbo`;
- deflated Sharpe ratio of the candidate's held-out returns, given how many trials were tried,
  >= `min_deflated_sharpe`;
- held-out Sharpe of the candidate minus that of the current ensemble (or of equal-weight
  buy-and-hold when there is none) >= `min_improvement` (a signed difference: worse is worse).

Every decision (candidate, metrics, pass/fail, reasons) goes to the database and the journal.
A promoted trial is pinned: the next ensemble version includes it (`promotion: pin`) or is it
alone (`promotion: alone`), and the trader reloads it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
from sqlalchemy.engine import Engine

from ..common.config import Config
from ..ensemble.evaluation import evaluate
from ..ensemble.manifest import current_dir, ensembles_dir
from ..ensemble.publish import sync
from ..ensemble.selection import SelectionError, pinned_trial, select_members
from ..ensemble.serving import Ensemble
from ..rl.backtest import HOURS_PER_YEAR
from ..rl.window import WindowError
from ..storage.database import deploy_decisions
from ..storage.optuna_db import ATTR_SPLITS, trial_attrs, trial_count

log = logging.getLogger(__name__)
EULER_GAMMA = 0.5772156649
# Below these, the gates have no evidence to judge by: with two partitions CSCV can only say 0
# or 1, and a deflated Sharpe over a handful of trials deflates by next to nothing. Such a
# measure is "not measurable", said so, and never promotes.
MIN_PBO_PARTITIONS = 8
MIN_DSR_TRIALS = 5


def probability_of_backtest_overfitting(perf: np.ndarray, max_combinations: int = 4000,
                                        seed: int = 0) -> float:
    """CSCV (Bailey et al.): `perf[s, n]` is configuration n's result on partition s. For each
    split of the partitions into halves, take the in-sample best and see where it ranks out of
    sample; PBO is the share of splits where it lands in the bottom half (logit <= 0)."""
    s, n = perf.shape
    if n < 2 or s < 2:
        return float("nan")
    s -= s % 2
    perf = perf[:s]
    combos = list(itertools.combinations(range(s), s // 2))
    if len(combos) > max_combinations:
        rng = np.random.default_rng(seed)
        combos = [combos[i] for i in rng.choice(len(combos), max_combinations, replace=False)]
    below = 0
    for is_rows in combos:
        oos_rows = [r for r in range(s) if r not in is_rows]
        best = int(np.argmax(perf[list(is_rows)].mean(axis=0)))
        oos = perf[oos_rows].mean(axis=0)
        rank = (np.sum(oos < oos[best]) + 0.5 * (np.sum(oos == oos[best]) - 1) + 1) / (n + 1)
        below += math.log(rank / (1 - rank)) <= 0
    return below / len(combos)


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int, trial_sr_variance: float) -> float:
    """Bailey & López de Prado: the probability that the true Sharpe exceeds the best one
    expected from `n_trials` tries of zero skill, given skewness and kurtosis. Sharpe ratios
    per period (not annualised)."""
    r = np.asarray(returns, dtype=float)
    if len(r) < 3 or r.std(ddof=1) < 1e-12:
        return 0.0
    sr = r.mean() / r.std(ddof=1)
    z = NormalDist()
    n = max(n_trials, 2)
    sr0 = math.sqrt(max(trial_sr_variance, 0.0)) * (
        (1 - EULER_GAMMA) * z.inv_cdf(1 - 1 / n) + EULER_GAMMA * z.inv_cdf(1 - 1 / (n * math.e)))
    centred = r - r.mean()
    skew = np.mean(centred ** 3) / r.std() ** 3
    kurt = np.mean(centred ** 4) / r.std() ** 4
    denom = math.sqrt(max(1 - skew * sr + (kurt - 1) / 4 * sr ** 2, 1e-12))
    return float(z.cdf((sr - sr0) * math.sqrt(len(r) - 1) / denom))


@dataclass
class Decision:
    study: str
    candidate_trial_id: int | None
    candidate_number: int | None
    metrics: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    passed: bool = False
    promoted: bool = False

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promoted else ("passed, no promotion" if self.passed
                                                  else "REJECT")
        return (f"study {self.study} candidate trial {self.candidate_number} "
                f"(id {self.candidate_trial_id}): {verdict}: " + "; ".join(self.reasons))


def _splits_matrix(engine: Engine, trial_ids: list[int]) -> np.ndarray:
    """Per-split excess Sharpe of each trial `[splits, trials]`, from their user_attrs."""
    with engine.connect() as conn:
        rows = trial_attrs(conn, trial_ids, (ATTR_SPLITS,))
    cols = [[s["excess_sharpe"] for s in rows[t][ATTR_SPLITS]] for t in trial_ids if t in rows]
    if len(cols) < 2:
        return np.zeros((0, 0))
    k = min(len(c) for c in cols)
    return np.array([c[:k] for c in cols]).T


def validate(cfg: Config, engine: Engine, study: str | None = None) -> Decision:
    study = study or cfg.active_study
    d = cfg.deploy
    top = select_members(engine, cfg, study, top_n=max(cfg.ensemble.top_n, 10))
    if not top.members:
        raise SelectionError(f"study {study!r} has no eligible trial to validate")
    best = top.members[0]
    decision = Decision(study, best.trial_id, best.number)
    candidate = Ensemble.of_trial(best.artifact_dir, best.sha256, study, best.trial_id,
                                  best.number, best.value, cfg)
    current_path = current_dir(ensembles_dir(cfg))
    current = Ensemble.load(current_path, cfg) if current_path is not None else None
    try:
        evaluation = evaluate(cfg, engine, [e for e in (candidate, current) if e is not None],
                              study, held_out_only=True)
    except WindowError as e:
        raise SelectionError(str(e)) from e
    window = evaluation.window
    if window.decisions < 48:
        decision.reasons.append(f"held-out window too short ({window})")
        return decision
    cand = evaluation.results[0]
    m = {"candidate": cand.metrics(), "held_out": [str(window.first), str(window.last)],
         "window": str(window)}
    if current is not None:
        m["current"] = evaluation.results[1].metrics()
        m["current_version"] = current.version
        baseline, base_name = m["current"]["sharpe"], f"ensemble v{current.version}"
    else:
        baseline, base_name = m["candidate"]["bh_sharpe"], "equal-weight buy-and-hold"
    perf = _splits_matrix(engine, [t.trial_id for t in top.members])
    partitions, configs = perf.shape if perf.size else (0, 0)
    measurable_pbo = partitions >= MIN_PBO_PARTITIONS and configs >= 2
    m["pbo"] = probability_of_backtest_overfitting(perf) if measurable_pbo else None
    m["pbo_partitions"] = partitions
    values = np.array([t.value for t in top.members])
    n_trials = trial_count(engine, study, ("COMPLETE", "PRUNED", "FAIL"))
    m["deflated_sharpe"] = deflated_sharpe_ratio(
        cand.returns, n_trials, float(values.var()) / HOURS_PER_YEAR if len(values) > 1
        else 0.0) if n_trials >= MIN_DSR_TRIALS else None
    m["improvement"] = m["candidate"]["sharpe"] - baseline
    m["n_trials"] = n_trials
    decision.metrics = m

    ok_pbo = m["pbo"] is not None and m["pbo"] <= d.max_pbo
    ok_dsr = m["deflated_sharpe"] is not None and m["deflated_sharpe"] >= d.min_deflated_sharpe
    ok_gain = m["improvement"] >= d.min_improvement
    decision.reasons += [
        f"PBO not measurable: {configs} trial(s) with {partitions} split result(s) each "
        f"(CSCV needs 2+ trials and {MIN_PBO_PARTITIONS}+ splits to rank)" if m["pbo"] is None
        else f"PBO {m['pbo']:.2f} {'<=' if ok_pbo else 'above'} {d.max_pbo} "
             f"({partitions} splits)",
        f"deflated Sharpe not measurable: {n_trials} trial(s) tried (needs "
        f"{MIN_DSR_TRIALS}+)" if m["deflated_sharpe"] is None
        else f"deflated Sharpe {m['deflated_sharpe']:.2f} {'>=' if ok_dsr else 'below'} "
             f"{d.min_deflated_sharpe}",
        f"held-out Sharpe {m['candidate']['sharpe']:.2f} vs {base_name} {baseline:.2f}: "
        f"{m['improvement']:+.2f} ({'>=' if ok_gain else 'below'} {d.min_improvement})",
    ]
    decision.passed = ok_pbo and ok_dsr
    decision.promoted = decision.passed and ok_gain and not _already_pinned(engine, study,
                                                                             best.trial_id)
    if decision.passed and ok_gain and not decision.promoted:
        decision.reasons.append("already deployed")
    return decision


def _already_pinned(engine: Engine, study: str, trial_id: int) -> bool:
    return pinned_trial(engine, study) == trial_id


def record(engine: Engine, decision: Decision) -> None:
    clean = json.loads(json.dumps(decision.metrics, default=float).replace("NaN", "null"))
    with engine.begin() as conn:
        conn.execute(deploy_decisions.insert().values(
            study=decision.study, candidate_trial_id=decision.candidate_trial_id,
            passed=decision.passed, promoted=decision.promoted, metrics=clean,
            reasons=decision.reasons))
    (log.warning if decision.promoted else log.info)("deploy decision: %s", decision.summary())


def run(cfg: Config, engine: Engine, study: str | None = None,
        dry_run: bool = False) -> tuple[Decision, str | None]:
    """What the hourly auto-deployer does: validate, record the decision, and publish a new
    ensemble version when the candidate is promoted. Returns the decision and the sync's
    message (None when nothing was published). `dry_run` decides and changes nothing."""
    decision = validate(cfg, engine, study)
    if dry_run:
        return decision, None
    record(engine, decision)
    if decision.promoted:
        from ..common.alerts import send_alert
        message = sync(cfg, engine, decision.study).message
        send_alert(cfg, f"promoted trial id {decision.candidate_trial_id}",
                   f"{decision.summary()}\n{message}", "info", "promotion", study=decision.study)
        return decision, message
    return decision, None
