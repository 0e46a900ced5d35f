"""The ensemble on real PostgreSQL: selection, atomic publishing, serving."""

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy as sa

from cappuccino_core import cli
from cappuccino_core.common.config import load_config
from cappuccino_core.data.features import compute_features
from cappuccino_core.data.synthetic import synthetic_market
from cappuccino_core.ensemble.manifest import current_dir, current_manifest, ensembles_dir
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.ensemble.selection import SelectionError, select_members
from cappuccino_core.ensemble.serving import Ensemble
from cappuccino_core.rl.env import BatchedTradingEnv, EnvSettings, Market
from cappuccino_core.storage.database import ensemble_versions, make_optuna_storage, open_app_db
from cappuccino_core.common.config import write_active_study
from cappuccino_core.artifacts.model import ArtifactError

from conftest import write_config
from ensemble_helpers import add_trial, local_model, stored_file, trial_artifacts


@pytest.fixture
def env(tmp_path, pg_url):
    """Config (PostgreSQL, active study 'alpha'), app database, Optuna storage."""
    cfg_dir = write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "risk": {"trailing_stop_pct": 0.10},  # a stop, for the rule checks (the default: none)
        "ensemble": {"top_n": 4, "min_members": 2}}, active_study="alpha")
    cfg = load_config(cfg_dir)
    return cfg, open_app_db(pg_url), make_optuna_storage(pg_url)


def new_study(storage, name):
    return optuna.create_study(study_name=name, storage=storage, direction="maximize")


# A sync in its own process that holds still for `pause_s` once its members are written, before
# the manifest: the moment a kill -9 or a second sync must not break anything.
PAUSING_SYNC = """
import sys, time
from cappuccino_core.common.config import load_config
from cappuccino_core.ensemble import sync
from cappuccino_core.storage.database import app_engine
cfg = load_config(sys.argv[1])
print(sync(cfg, app_engine(cfg), on_write=lambda tmp: time.sleep(float(sys.argv[2]))).message)
"""


def run_sync_cli(cfg, pause_s: float = 0.0):
    return subprocess.Popen([sys.executable, "-c", PAUSING_SYNC, cfg.config_dir, str(pause_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_current_is_complete(cfg):
    d = current_dir(ensembles_dir(cfg))
    manifest = json.loads((d / "manifest.json").read_text())
    for m in manifest["members"]:
        assert (d / m["path"] / "model.pt").exists() and (d / m["path"] / "spec.json").exists()
    return manifest


def test_selection_ignores_other_studies_with_the_same_numbers(env):
    cfg, engine, storage = env
    alpha, beta = new_study(storage, "alpha"), new_study(storage, "beta")
    mine = [add_trial(alpha, cfg, v, seed=i) for i, v in enumerate([0.1, 0.5, 0.3])]
    [add_trial(beta, cfg, v, seed=i) for i, v in enumerate([9.0, 8.0, 7.0])]  # numbers 0..2 too
    sel = select_members(engine, cfg, "alpha")
    assert [m.trial_id for m in sel.members] == [mine[1]._trial_id, mine[2]._trial_id,
                                                 mine[0]._trial_id]
    assert all(m.spec.study == "alpha" for m in sel.members)


def test_mismatched_and_corrupted_members_are_skipped_with_a_reason(env):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    good = add_trial(alpha, cfg, 0.1)
    reordered = add_trial(alpha, cfg, 0.9, symbols=list(reversed(cfg.data.symbols)))
    corrupted = add_trial(alpha, cfg, 0.8)
    with open(stored_file(cfg, corrupted), "r+b") as f:  # the archive, in the store
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    sel = select_members(engine, cfg, "alpha")
    assert [m.trial_id for m in sel.members] == [good._trial_id]
    reasons = {tid: why for tid, _, why in sel.skipped}
    assert "symbols" in reasons[reordered._trial_id]
    assert "checksum" in reasons[corrupted._trial_id]


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


def test_a_model_file_carrying_a_pickle_payload_is_refused_unexecuted(env, tmp_path,
                                                                       monkeypatch):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, 0.1, seed=1)
    evil = add_trial(alpha, cfg, 0.2, seed=2)
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    d = str(tmp_path / "evil")
    shutil.copytree(local_model(cfg, evil), d)
    import torch
    torch.save({"actor.0.weight": Payload()}, os.path.join(d, "model.pt"))  # pickled payload
    # an attacker who can write the store can also rewrite every checksum that names the file
    from cappuccino_core.artifacts.model import sha256_file
    digest = sha256_file(Path(d) / "model.pt")
    spec = json.loads(open(os.path.join(d, "spec.json")).read())
    spec["sha256"] = digest
    open(os.path.join(d, "spec.json"), "w").write(json.dumps(spec))
    trial_artifacts(cfg).upload_directory(Path(d), "alpha", evil._trial_id)
    # the sync test-loads every member: the checksum matches, the weights do not load
    result = sync(cfg, engine)
    assert result.status == "fallback" and not marker.exists()
    (why,) = [w for tid, _, w in result.selection.skipped if tid == evil._trial_id]
    assert "does not load" in why and "weights refused" in why
    assert current_manifest(ensembles_dir(cfg)).members == ()  # nothing published with it
    from cappuccino_core.artifacts.model import load_artifact
    with pytest.raises(ArtifactError, match="weights refused"):  # and serving refuses it too
        load_artifact(d, digest)
    assert not marker.exists()  # refused without executing
    # and the payload is real: unpickling it the unsafe way would have run it
    pickle.loads(pickle.dumps(Payload()))
    assert marker.exists()


def test_publish_then_unchanged_then_new_version(env):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i, v in enumerate([0.1, 0.2, 0.3]):
        add_trial(alpha, cfg, v, seed=i)
    first = sync(cfg, engine)
    assert first.status == "published" and first.version == 1
    manifest = assert_current_is_complete(cfg)
    assert manifest["study"] == "alpha" and len(manifest["members"]) == 3
    assert manifest["members"][0]["spec"]["env"]["trailing_stop_pct"] == 0.10
    assert "params" not in manifest["members"][0]  # no copies of spec fields
    assert sync(cfg, engine).status == "unchanged"
    assert len(list(ensembles_dir(cfg).glob("v*"))) == 1
    add_trial(alpha, cfg, 0.9, seed=7)
    second = sync(cfg, engine)
    assert second.status == "published" and second.version == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ensemble_versions.c.version, ensemble_versions.c.study)).all()
    assert sorted(rows) == [(1, "alpha"), (2, "alpha")]
    assert Ensemble.load(current_dir(ensembles_dir(cfg)), cfg).version == 2


def test_too_few_members_keeps_the_current_ensemble(env):
    cfg, engine, storage = env
    cfg = set_config(cfg, ensemble={"top_n": 4, "min_members": 2, "fallback": "keep_current"})
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, 0.1, seed=1)
    add_trial(alpha, cfg, 0.2, seed=2)
    assert sync(cfg, engine).version == 1
    new_study(storage, "gamma")
    add_trial(optuna.load_study(study_name="gamma", storage=storage), cfg, 5.0, seed=3)
    write_active_study(cfg.config_dir, "gamma")
    result = sync(load_config(cfg.config_dir), engine)
    assert result.status == "too_few" and "1 more needed" in result.message
    assert current_manifest(ensembles_dir(cfg)).study == "alpha"


def set_config(cfg, **sections):
    """The config with these sections rewritten in its file (read back as a daemon would)."""
    from pathlib import Path
    import yaml
    path = Path(cfg.config_dir) / "cappuccino.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | sections))
    return load_config(cfg.config_dir)


@pytest.mark.parametrize("fallback, held", [("cash", 0.0), ("hold_equal_weight", 1.0),
                                            ("hold_vol_managed", 1.0)])
def test_when_no_agent_is_good_enough_the_fallback_is_published_and_said(env, fallback, held,
                                                                          capsys):
    """Only trials that beat buy-and-hold in CV (value >= 0) join; with fewer than
    min_members, the configured fallback is published as a version without members: the
    trader holds cash or equal weights, and status, the monitor and `ensemble show` say so."""
    from cappuccino_core.operations import monitor, status
    from cappuccino_core.ensemble.serving import Ensemble
    cfg, engine, storage = env
    cfg = set_config(cfg, ensemble={"top_n": 4, "min_members": 2, "fallback": fallback})
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, -0.4, seed=1)  # lost to holding in CV
    add_trial(alpha, cfg, 0.3, seed=2)   # one good one is not enough
    result = sync(cfg, engine)
    assert result.status == "fallback" and "1 more needed" in result.message
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    assert ens.fallback == fallback and ens.members == []
    w = ens.target_weights(np.zeros((5, 3, 4)), np.array([0.2, 0.2, 0.2]), 0.4)
    assert w[:-1].sum() == pytest.approx(held) and w[-1] == pytest.approx(1.0 - held)
    assert sync(cfg, engine).status == "too_few"  # no new version for the same answer
    s = status.collect(cfg)
    assert s["ensemble"]["fallback"] == fallback and s["health"]["level"] == "warning"
    assert "no agent is good enough" in status.render(s)
    assert any(i.key == "ensemble-fallback" for i in monitor.check_ensemble(engine, cfg))
    assert cli.main(["ensemble", "show", "--config-dir", cfg.config_dir]) == 0
    assert "FALLBACK" in capsys.readouterr().out
    add_trial(alpha, cfg, 0.5, seed=3)  # a second good one: a real ensemble again
    assert sync(cfg, engine).status == "published"
    assert Ensemble.load(current_dir(ensembles_dir(cfg)), cfg).fallback is None


def test_unknown_or_empty_study_is_an_error_and_touches_nothing(env, capsys):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, 0.1, seed=1)
    add_trial(alpha, cfg, 0.2, seed=2)
    sync(cfg, engine)
    with pytest.raises(SelectionError, match="does not exist"):
        sync(cfg, engine, study="nope")
    new_study(storage, "empty")
    assert cli.main(["ensemble", "sync", "--config-dir", cfg.config_dir, "--study", "empty"]) == 1
    assert current_manifest(ensembles_dir(cfg)).version == 1


def test_switching_the_active_study_changes_the_next_selection(env):
    cfg, engine, storage = env
    alpha, beta = new_study(storage, "alpha"), new_study(storage, "beta")
    for i in range(2):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
        add_trial(beta, cfg, 0.1 * i, seed=10 + i)
    assert sync(cfg, engine).selection.study == "alpha"
    assert cli.main(["study", "activate", "beta", "--config-dir", cfg.config_dir]) == 0
    assert cli.main(["study", "activate", "nope", "--config-dir", cfg.config_dir]) == 1
    result = sync(load_config(cfg.config_dir), engine)
    assert result.status == "published"
    manifest = current_manifest(ensembles_dir(cfg))
    assert manifest.study == "beta"
    assert {m.trial_id for m in manifest.members} == \
        {t._trial_id for t in optuna.load_study(study_name="beta", storage=storage).trials}


def test_kill_9_during_publish_leaves_the_previous_version_current(env):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(3):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
    assert sync(cfg, engine).version == 1
    add_trial(alpha, cfg, 5.0, seed=9)
    proc = run_sync_cli(cfg, 60)
    root = ensembles_dir(cfg)
    deadline = time.monotonic() + 60
    while not list(root.glob(".tmp-v*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(root.glob(".tmp-v*")), proc.communicate()[0] if proc.poll() is not None else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert assert_current_is_complete(cfg)["version"] == 1  # readers still see v1, whole
    result = sync(cfg, engine)  # the next sync cleans up and succeeds
    assert result.status == "published"
    assert assert_current_is_complete(cfg)["version"] == result.version
    assert not list(root.glob(".tmp-*"))


def test_two_concurrent_syncs_publish_once(env):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(3):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
    procs = [run_sync_cli(cfg, 1) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    joined = "\n".join(outs)
    assert joined.count("published ensemble v1") == 1 and "up to date" in joined
    assert [p.name for p in ensembles_dir(cfg).glob("v*")] == ["v000001"]
    assert_current_is_complete(cfg)


def test_sync_tells_the_trader(env, tmp_path):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(2):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
    got = tmp_path / "got-hup"
    trader = subprocess.Popen([sys.executable, "-c", (
        "import signal, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(got)!r}).touch())\n"
        "time.sleep(30)\n")])
    time.sleep(0.5)
    try:
        (cfg.state_dir / "trader.pid").write_text(f"{trader.pid}\n")
        sync(cfg, engine)
        deadline = time.monotonic() + 10
        while not got.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got.exists()
    finally:
        trader.kill()
        trader.wait()


def test_each_member_is_served_with_its_own_lookback_and_normalisation(env):
    """Each member sees exactly the observation the training env would have given it."""
    cfg, engine, storage = env
    bars = synthetic_market(n_assets=7, n_bars=1200, seed=2)
    symbols = list(bars.symbols)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, symbols=symbols))
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, 0.3, lookback=1, seed=1, shift=0.0)
    add_trial(alpha, cfg, 0.2, lookback=4, seed=2, shift=0.5)
    add_trial(alpha, cfg, 0.1, lookback=2, seed=3, shift=-0.5)
    sync(cfg, engine)
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    feats = compute_features(bars, "v1")
    t = 1000
    got = ens.member_weights(feats[:t + 1], np.zeros(7), 1.0)
    for i, m in enumerate(ens.members):
        market = Market.from_bars(bars, m.norm, features=feats)
        benv = BatchedTradingEnv(market, [(t, 1200)], 1, EnvSettings(lookback=m.lookback),
                                 fixed_start=True)
        assert int(benv.t[0]) == t
        expected = m.agent.weights(benv.observe())[0].numpy()
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-7)
    assert len({tuple(np.round(g, 6)) for g in got}) == 3  # three different members
    combined = ens.target_weights(feats[:t + 1], np.zeros(7), 1.0)
    np.testing.assert_allclose(combined, got.mean(axis=0), rtol=1e-6)
    assert combined.sum() == pytest.approx(1.0, abs=1e-6)


def test_members_of_different_action_spaces_serve_in_one_ensemble(env):
    """A weights-space member and two relative-space ones (rl/actions.py), loaded from their
    artifacts: each answers through its own space, and the ensemble holds an asset (NaN, no
    order) only where every member does."""
    cfg, engine, storage = env
    bars = synthetic_market(n_assets=7, n_bars=1200, seed=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, symbols=list(bars.symbols)))
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, 0.3, seed=1)
    add_trial(alpha, cfg, 0.2, seed=2, action_space="relative")
    add_trial(alpha, cfg, 0.1, seed=3, action_space="relative")
    sync(cfg, engine)
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    assert sorted(m.spec.env.action_space for m in ens.members) == ["relative", "relative",
                                                                    "weights"]
    feats = compute_features(bars, "v1")
    current = np.full(7, 0.95 / 7)
    got = ens.member_weights(feats[:1001], current, 0.05)
    spaces = [m.spec.env.action_space for m in ens.members]
    for w, space in zip(got, spaces):  # untrained relative members sit in their dead zone
        assert np.isnan(w[:-1]).all() == (space == "relative")
    combined = ens.target_weights(feats[:1001], current, 0.05)
    weights_member = got[spaces.index("weights")]
    np.testing.assert_allclose(combined[:-1], (weights_member[:-1] + 2 * current) / 3, rtol=1e-5)
    assert not np.isnan(combined).any()


def test_study_list_and_ensemble_show(env, capsys):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(2):
        add_trial(alpha, cfg, 0.25 * (i + 1), seed=i)
    alpha.tell(alpha.ask(), state=optuna.trial.TrialState.PRUNED)
    assert cli.main(["study", "list", "--config-dir", cfg.config_dir]) == 0
    out = capsys.readouterr().out
    assert "alpha *" in out and "0.500" in out
    line = next(line for line in out.splitlines() if line.startswith("alpha"))
    assert line.split()[2:6] == ["2", "0", "0", "1"]
    sync(cfg, engine)
    assert cli.main(["ensemble", "show", "--config-dir", cfg.config_dir]) == 0
    out = capsys.readouterr().out
    assert "ensemble v1  study alpha" in out and "10%" in out and "best 0.500" in out
    assert "weights" in out  # each member's action space


@pytest.mark.parametrize("rule", ["refuse", "warn"])
def test_a_member_trained_under_another_stop_is_refused_or_warned(env, tmp_path, capsys, rule):
    """A model trained with a 12% trailing stop, traded under the configured 10%: refused from
    selection and serving (`refuse`), or served and shown as different (`warn`)."""
    cfg, engine, storage = env
    cfg_dir = write_config(tmp_path / f"etc-{rule}", {
        "storage": {"url": cfg.storage.url}, "paths": {"state_dir": str(cfg.state_dir)},
        "risk": {"trailing_stop_pct": 0.10},
        "ensemble": {"top_n": 4, "min_members": 2, "risk_mismatch": rule}}, active_study="alpha")
    cfg = load_config(cfg_dir)
    alpha = new_study(storage, "alpha")
    for i in range(2):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
    loose = add_trial(alpha, cfg, 0.9, seed=7, trailing_stop_pct=0.12)  # the best value
    sel = select_members(engine, cfg, "alpha")
    members = {m.trial_id for m in sel.members}
    if rule == "refuse":
        assert loose._trial_id not in members
        (skipped,) = [why for tid, _, why in sel.skipped if tid == loose._trial_id]
        assert "trailing stop 0.12 trained, 0.1 configured" in skipped
    else:
        assert loose._trial_id in members
        (m,) = [m for m in sel.members if m.trial_id == loose._trial_id]
        assert m.risk_differences == ["trailing stop 0.12 trained, 0.1 configured"]
    sync(cfg, engine)
    ensemble = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    assert (loose._trial_id in {m.trial_id for m in ensemble.members}) == (rule == "warn")
    assert cli.main(["ensemble", "show", "--config-dir", str(cfg_dir)]) == 0
    out = capsys.readouterr().out
    if rule == "warn":
        assert "1 member(s) trained under other risk rules" in out
        assert f"trial {loose.number} (id {loose._trial_id}): trailing stop 0.12 trained, " \
               "0.1 configured" in out
    else:
        assert "other risk rules" not in out
    assert cli.main(["status", "--config-dir", str(cfg_dir)]) in (0, 1)
    status = capsys.readouterr().out
    assert ("1 member(s) trained under other risk rules" in status) == (rule == "warn")
    # serving re-checks against today's configuration: under `refuse` the 12% member is refused
    strict = dataclasses.replace(cfg, ensemble=dataclasses.replace(cfg.ensemble,
                                                                   risk_mismatch="refuse"))
    if rule == "warn":
        with pytest.raises(ArtifactError, match="trailing stop 0.12 trained"):
            Ensemble.load(current_dir(ensembles_dir(cfg)), strict)


def test_an_unknown_optuna_schema_is_refused_with_one_clear_line(env, capsys):
    cfg, engine, storage = env
    new_study(storage, "alpha")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'v9.9.9.z'"))
    from cappuccino_core.storage.optuna_db import OptunaSchemaError, check_schema
    with pytest.raises(OptunaSchemaError, match="revision 'v9.9.9.z'"):
        check_schema(engine)
    code = cli.main(["study", "list", "--config-dir", cfg.config_dir])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Optuna schema is revision 'v9.9.9.z'" in err[0]


def test_study_import_from_an_old_sqlite_file(env, tmp_path):
    cfg, engine, storage = env
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="legacy", storage=make_optuna_storage(old_url))
    old.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    assert cli.main(["study", "import", "--from", old_url, "--config-dir", cfg.config_dir]) == 0
    copied = optuna.load_study(study_name="legacy", storage=storage)
    assert len(copied.trials) == 4 and copied.best_value == old.best_value


def test_a_reader_notices_a_new_version_without_any_signal_and_keeps_a_good_one(env):
    from cappuccino_core.ensemble.serving import EnsembleWatcher
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(2):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
    sync(cfg, engine)
    watcher = EnsembleWatcher(ensembles_dir(cfg), cfg)
    first, err = watcher.poll()
    assert first.version == 1 and err is None
    assert watcher.poll() == (None, None)  # nothing new
    add_trial(alpha, cfg, 0.9, seed=5)
    sync(cfg, engine)  # no trader pid file: the SIGHUP goes nowhere
    second, _ = watcher.poll()
    assert second.version == 2 and {m.trial_id for m in second.members} != \
        {m.trial_id for m in first.members}
    # a version whose member was damaged after publishing is refused; the reader keeps v2
    add_trial(alpha, cfg, 1.5, seed=6)
    sync(cfg, engine)
    damaged = current_dir(ensembles_dir(cfg)) / current_manifest(ensembles_dir(cfg)).members[0].path
    (damaged / "model.pt").write_bytes(b"garbage")
    third, err = watcher.poll()
    assert third is None and "refused, keeping the current one" in err and "checksum" in err
    assert watcher.poll() == (None, None)  # reported once


def test_status_shows_the_ensemble_and_how_many_trials_it_still_needs(env, capsys):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    add_trial(alpha, cfg, 0.4, seed=1)
    sync(cfg, engine)  # one eligible, two needed: the fallback (cash) is published
    assert cli.main(["status", "--config-dir", cfg.config_dir]) == 1  # a warning
    out = capsys.readouterr().out
    assert "1 complete" in out and "ensemble: v1 of study alpha is the FALLBACK (cash)" in out
    assert "1 more needed" in out and "no agent is good enough" in out
    add_trial(alpha, cfg, 0.5, seed=2)
    sync(cfg, engine)
    new_study(storage, "beta")
    write_active_study(cfg.config_dir, "beta")
    assert cli.main(["status", "--json", "--config-dir", cfg.config_dir]) == 2  # critical
    state = json.loads(capsys.readouterr().out)
    assert state["ensemble"]["version"] == 2 and state["ensemble"]["follows_active_study"] is False
    assert cli.main(["status", "--config-dir", cfg.config_dir]) == 2
    assert "DOES NOT FOLLOW THE ACTIVE STUDY" in capsys.readouterr().out


def test_optional_rules_and_old_versions_are_pruned(env):
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(4):
        add_trial(alpha, cfg, -0.5 + 0.3 * i, seed=i)  # values -0.5, -0.2, 0.1, 0.4
    assert len(select_members(engine, cfg, "alpha", min_value=0.0).members) == 2
    # the helper gives every trial the same hyperparameters except the learning rate, which
    # differs by more than 5% between seeds: all distinct; two identical ones are limited
    add_trial(alpha, cfg, 0.9, seed=3)  # a twin of seed 3
    sel = select_members(engine, cfg, "alpha", max_similar=1)
    assert [m.value for m in sel.members][:2] == [0.9, pytest.approx(0.1)]
    assert any("members with these parameters" in why for _, _, why in sel.skipped)
    cfg = dataclasses.replace(cfg, ensemble=dataclasses.replace(cfg.ensemble, keep_versions=2))
    for i in range(4):
        add_trial(alpha, cfg, 2.0 + i, seed=20 + i)
        sync(cfg, engine)
    versions = sorted(p.name for p in ensembles_dir(cfg).glob("v*"))
    assert versions == ["v000003", "v000004"] and current_manifest(ensembles_dir(cfg)).version == 4
    assert all(m.completed_at for m in current_manifest(ensembles_dir(cfg)).members)


def test_a_study_switch_during_a_sync_is_followed_by_the_same_sync(env):
    """systemd merges the path unit's start into a sync already running; the running sync
    sees the change when it ends and syncs the new study too."""
    from cappuccino_core.ensemble.publish import sync_following
    cfg, engine, storage = env
    alpha, beta = new_study(storage, "alpha"), new_study(storage, "beta")
    for i in range(2):
        add_trial(alpha, cfg, 0.1 * i, seed=i)
        add_trial(beta, cfg, 0.1 * i, seed=10 + i)
    write_active_study(cfg.config_dir, "beta")  # written while a sync of alpha was running
    result = sync_following(cfg, engine)  # cfg still says alpha: what the sync started with
    assert result.selection.study == "beta" and current_manifest(ensembles_dir(cfg)).study == "beta"


def test_a_truncated_manifest_is_broken_everywhere_and_the_next_sync_heals_it(env, capsys):
    """A manifest cut short on disk: `ensemble show` (exit 1), `status` and the trader's
    loader call the version broken in one line each, never a JSONDecodeError; the next sync
    publishes a fresh, whole version."""
    import jsonschema
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(2):
        add_trial(alpha, cfg, 0.25 * (i + 1), seed=i)
    assert sync(cfg, engine).version == 1
    manifest = current_dir(ensembles_dir(cfg)) / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert cli.main(["ensemble", "show", "--config-dir", cfg.config_dir]) == 1
    out = capsys.readouterr().out
    assert out.startswith("ensemble v1  study None") and "BROKEN: manifest unreadable" in out
    assert cli.main(["status", "--json", "--config-dir", cfg.config_dir]) == 2
    status = json.loads(capsys.readouterr().out)
    schema = json.loads((Path(__file__).parents[1] / "docs" / "status.schema.json").read_text())
    jsonschema.validate(status, schema)
    assert "manifest unreadable" in status["ensemble"]["broken"][0]
    with pytest.raises(ArtifactError, match="manifest.json unreadable"):
        Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    healed = sync(cfg, engine)
    assert healed.status == "published" and healed.version == 2
    assert assert_current_is_complete(cfg)["study"] == "alpha"
    assert cli.main(["ensemble", "show", "--config-dir", cfg.config_dir]) == 0


def test_the_manifest_is_typed_and_validated_once(env):
    """`Manifest.from_dict` is the one reading: what it writes it reads back equal; keys of
    earlier releases' copied spec fields are read past; a member without a valid spec, or a
    key it does not know, is a ManifestError naming the member."""
    from cappuccino_core.ensemble.manifest import Manifest, ManifestError, read_manifest
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    for i in range(2):
        add_trial(alpha, cfg, 0.25 * (i + 1), seed=i)
    sync(cfg, engine)
    d = current_dir(ensembles_dir(cfg))
    manifest = read_manifest(d)
    assert Manifest.from_dict(manifest.to_dict()).to_dict() == manifest.to_dict()
    raw = json.loads((d / "manifest.json").read_text())
    raw["members"][0] |= {"params": {"gamma": 0.9}, "trailing_stop_pct": 0.1}  # as 0.1 wrote
    assert Manifest.from_dict(raw).to_dict() == manifest.to_dict()
    raw["members"][1]["spec"]["lookback"] = 0
    with pytest.raises(ManifestError, match="member 1"):
        Manifest.from_dict(raw)
    raw["members"][1] = manifest.members[1].to_dict() | {"surprise": 1}
    with pytest.raises(ManifestError, match="surprise"):
        Manifest.from_dict(raw)
    assert "spec" not in manifest.record()["members"][0]


def test_a_near_constant_trial_never_joins_unless_admitted(env):
    """Issue 26: a trial whose policy training flagged near-constant (it holds about one
    portfolio whatever the market does) is skipped, saying why, however good its value:
    holding is cheaper served as the fallback; `ensemble.near_constant: admit` lets it in."""
    from cappuccino_core.ensemble.selection import NEAR_CONSTANT_WHY, select_members
    cfg, engine, storage = env
    alpha = new_study(storage, "alpha")
    flat = add_trial(alpha, cfg, 0.9, seed=1, near_constant=True)
    moving = add_trial(alpha, cfg, 0.2, seed=2)
    sel = select_members(engine, cfg, "alpha")
    assert [m.trial_id for m in sel.members] == [moving._trial_id]
    assert sel.skipped == [(flat._trial_id, flat.number, NEAR_CONSTANT_WHY)]
    admitted = set_config(cfg, ensemble={"near_constant": "admit"})
    assert [m.trial_id for m in select_members(engine, admitted, "alpha").members] == \
        [flat._trial_id, moving._trial_id]
