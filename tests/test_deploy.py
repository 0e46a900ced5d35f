"""The validation gate on a planted-signal market: overfitting is rejected, a genuinely
better model is promoted and traded."""

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import torch

from cappuccino_core import cli
from cappuccino_core.rl.agent import PPOConfig, train_ppo
from cappuccino_core.common.config import load_config
from cappuccino_core.data.features import WARMUP, compute_features
from cappuccino_core.data.synthetic import synthetic_market
from cappuccino_core.operations.deploy import (deflated_sharpe_ratio, probability_of_backtest_overfitting,
                                    record, validate)
from cappuccino_core.ensemble.manifest import current_manifest, ensembles_dir
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.rl.env import BatchedTradingEnv, EnvSettings, Market, Normalisation
from cappuccino_core.storage.database import deploy_decisions, make_optuna_storage, open_app_db

from conftest import write_config
from ensemble_helpers import add_trial

N_BARS, TRAIN_END = 4000, 3000


def test_pbo_separates_consistent_from_overfit_results():
    rng = np.random.default_rng(0)
    skill = np.linspace(0, 2, 8)
    consistent = skill + rng.normal(0, 0.2, size=(10, 8))  # the same order in every split
    assert probability_of_backtest_overfitting(consistent) < 0.1
    # no skill: every configuration's results sum to the same total, so whatever shines in
    # sample must do worst out of sample
    lucky = rng.normal(0, 1, size=(10, 8))
    lucky -= lucky.mean(axis=0)
    assert probability_of_backtest_overfitting(lucky) > 0.9


def test_deflated_sharpe_penalises_many_trials():
    r = np.random.default_rng(1).normal(0.0005, 0.01, 2000)
    assert deflated_sharpe_ratio(r, 2, 1e-4) > deflated_sharpe_ratio(r, 1000, 1e-4)
    assert deflated_sharpe_ratio(-r, 10, 1e-4) < 0.1


@pytest.fixture(scope="module")
def market_files(tmp_path_factory):
    """The planted-signal market as CSV files, so validation reads it like real data."""
    bars = synthetic_market(n_assets=4, n_bars=N_BARS, seed=0)
    d = tmp_path_factory.mktemp("synthetic")
    for a, sym in enumerate(bars.symbols):
        o, h, lo, c, v = (bars.ohlcv[:, a, i] for i in range(5))
        pd.DataFrame({"date": bars.index.strftime("%Y-%m-%d %H:%M:%S"), "open": o, "high": h,
                      "low": lo, "close": c, "volume": v}).to_csv(
            d / f"{sym.split('/')[0]}USD_1h.csv", index=False)
    return d, bars


@pytest.fixture(scope="module")
def good_agent(market_files):
    """PPO trained on the training part only (the learning test's recipe)."""
    _, bars = market_files
    feats = compute_features(bars, "v1")
    norm = Normalisation.fit(feats, np.arange(WARMUP, TRAIN_END))
    market = Market.from_bars(bars, norm, features=feats)
    settings = EnvSettings(lookback=1, episode_bars=336, min_rebalance_weight=0.15)
    ppo = PPOConfig(total_timesteps=600_000, n_envs=32, n_steps=64, learning_rate=1e-3,
                    hidden=64, layers=2, init_log_std=-1.0, gamma=0.5, gae_lambda=0.9)
    torch.set_num_threads(2)
    agent = train_ppo(BatchedTradingEnv(market, [(WARMUP, TRAIN_END)], 32, settings, seed=0),
                      ppo, seed=0)
    return agent, norm.to_dict()


@pytest.fixture
def hook():
    from conftest import webhook_receiver
    with webhook_receiver() as received_at:
        yield received_at


def make_env(tmp_path, market_files, pg_url, **extra):
    d, bars = market_files
    cfg = load_config(write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "data": {"csv_path": str(d), "symbols": list(bars.symbols), "start": "2021-01-01"},
        # members with no skill are what these tests deploy against: any value joins
        "ensemble": {"top_n": 5, "min_members": 3, "min_value": None}, **extra},
        active_study="gate"))
    engine = open_app_db(pg_url)
    study = optuna.create_study(study_name="gate", storage=make_optuna_storage(pg_url),
                                direction="maximize")
    study.set_user_attr("train_end", str(bars.index[TRAIN_END]))
    return cfg, engine, study


def test_a_model_overfit_on_purpose_is_rejected(tmp_path, market_files, pg_url):
    cfg, engine, study = make_env(tmp_path, market_files, pg_url)
    rng = np.random.default_rng(7)
    for k in range(6):  # luck, not skill: each trial's splits sum to the same total
        splits = rng.normal(0, 2, 8)
        add_trial(study, cfg, 5.0 - k, seed=k, band=0.15, splits=list(splits - splits.mean()))
    decision = validate(cfg, engine)
    assert not decision.passed and not decision.promoted
    assert decision.metrics["pbo"] > cfg.deploy.max_pbo
    assert any(r.startswith("PBO") and "above" in r for r in decision.reasons)
    record(engine, decision)
    with engine.connect() as conn:
        row = conn.execute(sa.select(deploy_decisions)).one()
    assert row.passed is False and row.promoted is False and row.reasons == decision.reasons
    assert current_manifest(ensembles_dir(cfg)) is None  # nothing deployed


def test_gates_without_evidence_are_not_measurable_and_never_promote(tmp_path, market_files,
                                                                     pg_url, good_agent):
    """The same genuinely better model, judged on two split results per trial and four trials
    in all: CSCV cannot rank two partitions and four trials deflate nothing. Both gates say
    "not measurable" and the model is not promoted."""
    cfg, engine, study = make_env(tmp_path, market_files, pg_url)
    rng = np.random.default_rng(3)
    for k in range(3):
        add_trial(study, cfg, -0.3 + 0.05 * k, seed=k, band=0.15,
                  splits=list(-0.3 + rng.normal(0, 0.05, 2)))
    agent, norm = good_agent
    add_trial(study, cfg, 2.0, seed=99, hidden=64, layers=2, band=0.15, agent=agent,
              normalisation=norm, splits=[2.0, 2.1])
    decision = validate(cfg, engine)
    assert not decision.passed and not decision.promoted
    assert decision.metrics["pbo"] is None and decision.metrics["deflated_sharpe"] is None
    assert any(r.startswith("PBO not measurable: 4 trial(s) with 2 split result(s)")
               for r in decision.reasons), decision.reasons
    assert any(r.startswith("deflated Sharpe not measurable: 4 trial(s)")
               for r in decision.reasons), decision.reasons


def test_a_genuinely_better_model_is_promoted_and_published(tmp_path, market_files, pg_url,
                                                          good_agent, capsys, hook):
    url, received = hook
    cfg, engine, study = make_env(tmp_path, market_files, pg_url, alerts={
        "urls": [f"json://{url.removeprefix('http://')}/hook"]})
    rng = np.random.default_rng(3)
    for k in range(5):  # today's ensemble: members with no skill
        add_trial(study, cfg, -0.3 + 0.05 * k, seed=k, band=0.15,
                  splits=list(-0.3 + 0.05 * k + rng.normal(0, 0.05, 8)))
    assert sync(cfg, engine).version == 1
    agent, norm = good_agent
    good = add_trial(study, cfg, 2.0, seed=99, hidden=64, layers=2, band=0.15, agent=agent,
                     normalisation=norm, splits=list(2.0 + rng.normal(0, 0.1, 8)))
    assert cli.main(["deploy", "--dry-run", "--config-dir", cfg.config_dir]) == 0
    out = capsys.readouterr().out
    assert "PROMOTE" in out and "dry run: would promote" in out
    assert "window: " in out and "held-out window of study" in out  # the bars it judged on
    assert current_manifest(ensembles_dir(cfg)).version == 1  # the dry run changed nothing
    from test_operator import json_of
    dry = json_of(capsys, "deploy", "--dry-run", "--config-dir", cfg.config_dir, schema="deploy")
    assert dry["promoted"] and dry["dry_run"] and dry["published"] is None
    assert dry["candidate_trial_id"] == good._trial_id
    decision = validate(cfg, engine)
    m = decision.metrics
    assert decision.promoted, decision.reasons
    assert m["candidate"]["sharpe"] > m["current"]["sharpe"] + 1.0
    assert m["candidate"]["total_return"] > m["candidate"]["bh_total_return"]
    assert cli.main(["deploy", "--config-dir", cfg.config_dir]) == 0
    manifest = current_manifest(ensembles_dir(cfg))
    assert manifest.version == 2
    pinned = [x for x in manifest.members if x.pinned]
    assert [x.trial_id for x in pinned] == [good._trial_id]
    # announced: each version published, and the promotion (the dry run said nothing)
    titles = [b["title"] for _, b in received]
    assert sum("INFO ensemble-version: ensemble v" in t for t in titles) == 2
    (promoted,) = [t for t in titles if "promotion" in t]
    assert f"INFO promotion: promoted trial id {good._trial_id}" in promoted
    # the next hour: nothing new to deploy
    again = validate(cfg, engine)
    assert not again.promoted and "already deployed" in again.reasons


def test_report_and_backtest_commands(tmp_path, market_files, pg_url, capsys):
    cfg, engine, study = make_env(tmp_path, market_files, pg_url)
    for k in range(3):
        add_trial(study, cfg, 0.1 * k, seed=k, band=0.15, splits=[0.1 * k] * 6)
    sync(cfg, engine)
    from cappuccino_core.trading.replay import replay
    replay(cfg, engine, start=str(market_files[1].index[TRAIN_END]), name="paper")
    out = tmp_path / "report.html"
    assert cli.main(["report", "--out", str(out), "--config-dir", cfg.config_dir]) == 0
    page = out.read_text()
    for needle in ("Paper trading (paper)", "Equity vs equal-weight buy-and-hold",
                   "Drawdown", "Position weights", "Recent trades", "Backtest: ensemble v1",
                   "Members: each alone", "Optimisation history: study gate", "<polyline"):
        assert needle in page, needle
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # offline
    assert page.count("<svg") >= 8
    trial_id = study.best_trial._trial_id
    assert cli.main(["backtest", "--trial", str(trial_id), "--from", "2022-05-01",
                     "--config-dir", cfg.config_dir]) == 0
    text = capsys.readouterr().out
    assert "Sharpe" in text and "buy-and-hold return" in text
    from test_operator import json_of
    run = json_of(capsys, "backtest", "--trial", str(trial_id), "--from", "2022-05-01",
                  "--config-dir", cfg.config_dir, schema="backtest")
    assert run["policy"] == f"trial {study.best_trial.number}" and run["decisions"] > 10
    assert run["final_equity"] == pytest.approx(run["initial_equity"]
                                                * (1 + run["metrics"]["total_return"]))
    assert cli.main(["backtest", "--ensemble", "current", "--config-dir", cfg.config_dir]) == 0
