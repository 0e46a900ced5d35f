"""The paper trader with the simulated broker: replay, stops, restarts, stale bars, reloads."""

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy as sa

from cappuccino_core import cli
from cappuccino_core.broker.sim import SimBroker
from cappuccino_core.common.config import load_config
from cappuccino_core.ensemble.evaluation import evaluate
from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.ensemble.serving import Ensemble
from cappuccino_core.storage.database import make_optuna_storage, open_app_db, sim_orders
from cappuccino_core.trading.journal import Journal, StateKey
from cappuccino_core.trading.replay import replay
from cappuccino_core.trading.trader import Trader

from conftest import write_config
from ensemble_helpers import add_trial

SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD"]
LUNA = ("2022-05-01", "2022-06-01")  # a falling market: stops must fire


def setup_trader_env(tmp_path, shared_data, name="etc", members=4, **config):
    """A trader's config with the 10% trailing stop (what these tests exercise; the default is
    none), a study of `members` small trials, and their ensemble published."""
    risk = {"trailing_stop_pct": 0.10, **config.pop("risk", {})}
    cfg = load_config(write_config(tmp_path / name, {
        "paths": {"state_dir": str(tmp_path / name / "state")},
        "data": {"csv_path": str(shared_data), "symbols": SYMBOLS}, "risk": risk,
        "ensemble": {"top_n": members, "min_members": 1}, **config}, active_study="live"))
    engine = open_app_db(cfg.storage_url)
    study = optuna.create_study(study_name="live", storage=make_optuna_storage(cfg.storage_url),
                                direction="maximize")
    for i in range(members):
        add_trial(study, cfg, 0.1 * i, lookback=1 + i % 3, seed=i, band=0.02)
    sync(cfg, engine)
    return cfg, engine, study


def test_replay_on_real_data_is_deterministic(tmp_path, shared_data):
    runs = []
    for k in range(2):
        cfg, engine, _ = setup_trader_env(tmp_path, shared_data, name=f"run{k}")
        result = replay(cfg, engine, *LUNA)
        runs.append(([tuple(r)[:6] for r in Journal(engine, "replay").fill_rows()], result.equity))
    (fills_a, eq_a), (fills_b, eq_b) = runs
    assert len(fills_a) > 20 and fills_a == fills_b and eq_a == eq_b
    assert any("-stop-" in f[0] for f in fills_a)  # the crash tripped trailing stops


def test_replay_cli_and_inspection(tmp_path, shared_data, capsys):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    d = cfg.config_dir
    assert cli.main(["paper", "--replay", "--from", LUNA[0], "--to", LUNA[1], "--config-dir", d,
                     "--name", "paper"]) == 0
    assert "replayed" in capsys.readouterr().out
    assert cli.main(["trader", "status", "--config-dir", d]) == 0
    out = capsys.readouterr().out
    assert "equity" in out and "last bar 2022-05-31" in out
    assert cli.main(["trader", "history", "--config-dir", d, "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "realised P&L" in out and "filled" in out
    assert cli.main(["status", "--config-dir", d]) < 2
    out = capsys.readouterr().out
    assert "trader paper (replay): equity" in out and "last bar 2022-05-31" in out
    # a replayed May 2022 is history, not a trader years behind
    assert "behind" not in out.lower()
    assert "units: unknown" in out or "cappuccino" in out  # no systemd here: says so


@pytest.mark.parametrize("price", [0.05, 3.0, 450.0, 100_000.0])
def test_trailing_stop_fires_on_the_right_tick_and_sells_everything(tmp_path, shared_data,
                                                                    price):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    broker = SimBroker(engine, 100_000, cfg.broker.taker_fee, 0.0)
    broker.mark({s: price for s in SYMBOLS})
    broker.submit_market_order("ETH/USD", "buy", 30_000 / price, "manual-buy")
    trader = Trader(cfg, broker, engine, "stops")
    trader.start()  # adopts the position: entry = peak = fill price
    held = broker.positions()["ETH/USD"].qty
    path = [1.05, 1.12, 1.20, 1.15, 1.09, 1.081, 1.0799, 1.2]  # peak 1.20 -> level 1.08
    fired_at = None
    for k, p in enumerate(path):
        px = np.array([price, price * p, price])
        exits = trader.check_stops(px, px, px, px)
        if exits:
            fired_at = k
            broker.mark({"ETH/USD": price * p})
            trader.exit_positions(exits, pd.Timestamp("2024-01-01 00:00", tz="UTC")
                                  + pd.Timedelta(minutes=k))
            break
    assert fired_at == 6  # 1.0799 <= 1.20 x 0.90, and not a tick earlier
    assert "ETH/USD" not in broker.positions()
    with engine.connect() as conn:
        sold = conn.execute(sa.select(sim_orders.c.qty).where(
            sim_orders.c.client_order_id.like("cap-stops-stop-%"))).scalars().all()
    assert sold == [held]  # the whole position, in the asset's own units


class CrashAfter:
    """A broker that dies (like the process would) after `n` submissions."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit_market_order(self, *args):
        if self.n == 0:
            raise SystemExit("crash")
        self.n -= 1
        return self.inner.submit_market_order(*args)


def _first_decision(cfg, engine, broker_factory, crash_after=None):
    from cappuccino_core.data import load_bars
    from cappuccino_core.data.features import compute_features
    bars = load_bars(cfg, end="2022-05-10")
    feats = compute_features(bars, "v1")
    t = len(bars) - 2
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    broker = broker_factory()
    broker.mark(dict(zip(SYMBOLS, bars.open[t + 1])))
    wrapped = CrashAfter(broker, crash_after) if crash_after is not None else broker
    trader = Trader(cfg, wrapped, engine, "paper", ens)
    trader.start()
    now = bars.index[t] + pd.Timedelta(hours=1, seconds=10)
    return trader, lambda: trader.on_bar(bars.index[t], feats[:t + 1], now)


def test_restart_mid_bar_resumes_without_double_trading(tmp_path, shared_data):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, name="crash")
    ref_cfg, ref_engine, _ = setup_trader_env(tmp_path, shared_data, name="ref")
    make = lambda e, c: (lambda: SimBroker(e, 100_000, c.broker.taker_fee,  # noqa: E731
                                           c.broker.slippage_bps))
    _, decide = _first_decision(ref_cfg, ref_engine, make(ref_engine, ref_cfg))
    assert decide() == "traded"
    _, decide = _first_decision(cfg, engine, make(engine, cfg), crash_after=1)
    with pytest.raises(SystemExit):
        decide()
    trader, decide = _first_decision(cfg, engine, make(engine, cfg))  # systemd restarts it
    assert decide() == "traded"
    assert decide() == "already processed"
    with engine.connect() as conn:
        ids = conn.execute(sa.select(sim_orders.c.client_order_id)).scalars().all()
    assert len(ids) == len(set(ids)) >= 2
    ref = SimBroker(ref_engine, 0, 0, 0).positions()
    got = SimBroker(engine, 0, 0, 0).positions()
    # the same decision, finished: equal holdings up to the fees already paid before the
    # crash (a double trade would double a position)
    assert set(got) == set(ref) and got
    for s in ref:
        assert got[s].qty == pytest.approx(ref[s].qty, rel=5e-3)


def test_stale_bars_are_never_traded(tmp_path, shared_data):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    trader, _ = _first_decision(cfg, engine, lambda: SimBroker(engine, 100_000, 0.0025, 0))
    bar = pd.Timestamp("2022-05-09 20:00", tz="UTC")
    feats = np.zeros((10, 3, 16))
    late = bar + pd.Timedelta(hours=1 + cfg.risk.stale_bar_limit_bars, seconds=1)
    assert trader.on_bar(bar, feats, late) == "stale"
    assert trader.on_bar(bar, feats, bar + pd.Timedelta(hours=1)) == "already processed"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sim_orders)).scalar() == 0


def test_a_reload_mid_run_misses_no_bar_and_the_next_decision_uses_the_new_members(
        tmp_path, shared_data):
    cfg, engine, study = setup_trader_env(tmp_path, shared_data)
    seen = []

    def hook(t, trader):
        seen.append((t, trader.ensemble.version, trader.last_bar))
        if len(seen) == 100:
            for i in range(4):
                add_trial(study, cfg, 10 + i, lookback=2, seed=100 + i, band=0.02)
            assert sync(cfg, engine).status == "published"

    result = replay(cfg, engine, *LUNA, on_bar=hook)
    assert result.versions == [1, 2]
    versions = [v for _, v, _ in seen]
    assert versions[:100] == [1] * 100 and set(versions[100:]) == {2}
    processed = [b for _, _, b in seen]
    assert len(set(processed)) == len(seen) == result.bars  # every bar, once
    new_ids = {m.trial_id for m in Ensemble.load(current_dir(ensembles_dir(cfg)), cfg).members}
    assert new_ids == {t._trial_id for t in study.trials if t.value >= 10}


def test_sim_broker_is_idempotent_and_refuses_what_it_cannot_do(tmp_path):
    engine = open_app_db(f"sqlite:///{tmp_path / 'b.db'}")
    b = SimBroker(engine, 1_000, fee=0.0025, slippage_bps=10)
    b.mark({"BTC/USD": 100.0})
    first = b.submit_market_order("BTC/USD", "buy", 5, "id-1")
    again = b.submit_market_order("BTC/USD", "buy", 5, "id-1")
    # the buy fee is taken from the asset received, as Alpaca charges it
    assert first.status == again.status == "filled"
    assert b.positions()["BTC/USD"].qty == pytest.approx(5 * 0.9975)
    assert first.fee_qty == again.fee_qty == pytest.approx(5 * 0.0025)
    assert first.filled_avg_price == pytest.approx(100.1)
    assert b.account().cash == pytest.approx(1_000 - 500.5)
    assert b.submit_market_order("BTC/USD", "buy", 50, "id-2").reason == "insufficient balance"
    assert "insufficient qty" in b.submit_market_order("BTC/USD", "sell", 6, "id-3").reason
    assert "below the minimum" in b.submit_market_order("BTC/USD", "buy", 1e-8, "id-4").reason
    reopened = SimBroker(engine, 999_999, 0.0025, 10)  # the book survives a restart
    assert reopened.positions()["BTC/USD"].qty == pytest.approx(5 * 0.9975)
    assert reopened.account().cash == pytest.approx(b.account().cash)


def test_start_reconciles_with_the_broker(tmp_path, shared_data, caplog):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    broker = SimBroker(engine, 100_000, 0.0, 0.0)
    broker.mark({"BTC/USD": 30_000.0, "ETH/USD": 2_000.0, "SOL/USD": 40.0})
    broker.submit_market_order("BTC/USD", "buy", 1.0, "outside-1")  # bought behind its back
    trader = Trader(cfg, broker, engine, "rec")
    trader.state.stops["SOL/USD"] = {"entry": 40.0, "peak": 50.0}  # a position it lost
    trader.start()
    assert set(trader.state.stops) == {"BTC/USD"}
    assert trader.state.stops["BTC/USD"] == {"entry": 30_000.0, "peak": 30_000.0}
    text = caplog.text
    assert "SOL/USD has no position at the broker" in text and "BTC/USD 1.00000000 held" in text


def test_drawdown_halt_stops_new_buying(tmp_path, shared_data):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, risk={"max_drawdown_halt_pct": 0.2})
    trader = Trader(cfg, SimBroker(engine, 100_000, 0.0, 0.0), engine, "dd")
    target = np.array([0.3, 0.3, 0.3, 0.1])
    current = np.array([0.1, 0.0, 0.2])
    assert np.allclose(trader._drawdown_guard(target, current, 100_000.0), target)
    assert np.allclose(trader._drawdown_guard(target, current, 85_000.0), target)  # -15%
    halted = trader._drawdown_guard(target, current, 79_000.0)  # -21%: no new buying
    assert np.allclose(halted[:-1], [0.1, 0.0, 0.2]) and halted.sum() == pytest.approx(1)
    assert trader.state.halted is True


def test_the_journal_checks_every_order_status_change(tmp_path):
    from cappuccino_core.broker.base import OrderState, OrderStatus
    from cappuccino_core.trading.journal import ALLOWED, InvalidTransition, Journal
    engine = open_app_db(f"sqlite:///{tmp_path / 'j.db'}")
    journal = Journal(engine, "t")
    when = pd.Timestamp("2024-01-01", tz="UTC")
    assert journal.record_new("cap-t-1", "BTC/USD", "buy", 0.5, "rebalance", when)
    assert not journal.record_new("cap-t-1", "BTC/USD", "buy", 0.5, "rebalance", when)
    assert journal.open_orders() == ["cap-t-1"]
    state = OrderState("cap-t-1", "BTC/USD", "buy", 0.5, 0.2, 100.0, "partially_filled", 0.05)
    journal.record_result(state)
    journal.record_result(dataclasses_replace(state, filled_qty=0.5, status="filled", fee=0.125))
    assert journal.open_orders() == []
    with pytest.raises(InvalidTransition, match="filled -> canceled"):
        journal.record_result(dataclasses_replace(state, status="canceled"))
    with pytest.raises(InvalidTransition, match="filled -> not_sent"):
        journal.mark_not_sent("cap-t-1")
    with engine.connect() as conn:
        from cappuccino_core.storage.database import fills, orders
        assert conn.execute(sa.select(orders.c.status)).scalar() == "filled"
        assert conn.execute(sa.select(fills.c.qty)).scalars().all() == pytest.approx([0.2, 0.3])
    # every status a broker can answer with is known, and a final one never moves on
    assert all(ALLOWED[s] == {s} for s in OrderStatus if s.final and s is not OrderStatus.NOT_SENT)
    with pytest.raises(ValueError):
        OrderState("x", "BTC/USD", "buy", 1, 0, None, "teleported")


def dataclasses_replace(state, **changes):
    import dataclasses
    return dataclasses.replace(state, **changes)


def _rebuys_after_stops(engine, trader: str, within: pd.Timedelta) -> tuple[int, int]:
    """(stop exits, rebalance buys of the same asset within `within` after one)."""
    from cappuccino_core.storage.database import orders
    with engine.connect() as conn:
        rows = conn.execute(sa.select(orders.c.symbol, orders.c.side, orders.c.reason,
                                      orders.c.bar_time, orders.c.filled_qty)
                            .where(orders.c.trader == trader)).all()
    exits = [(r.symbol, pd.Timestamp(r.bar_time)) for r in rows if r.reason == "stop"]
    buys = [(r.symbol, pd.Timestamp(r.bar_time)) for r in rows
            if r.reason == "rebalance" and r.side == "buy" and r.filled_qty > 0]
    return len(exits), sum(1 for s, t in exits for b, u in buys if b == s and t <= u < t + within)


def test_the_reentry_cooldown_ends_the_stop_churn_in_a_replay(tmp_path, shared_data):
    """In a falling month with a 10% trailing stop, without the rule a stopped asset is bought
    back at the next bars; with it, never within the cooldown."""
    churn = {}
    for cooldown in (0, 24):
        cfg, engine, _ = setup_trader_env(tmp_path, shared_data, name=f"c{cooldown}",
                                          risk={"reentry_cooldown_bars": cooldown})
        replay(cfg, engine, *LUNA)
        churn[cooldown] = _rebuys_after_stops(engine, "replay", pd.Timedelta(hours=24))
    assert churn[0][0] > 0 and churn[0][1] > 0  # the old churn: exit, re-buy soon after
    assert churn[24][0] > 0 and churn[24][1] == 0


def test_a_null_trailing_stop_switches_it_off(tmp_path, shared_data):
    """`risk.trailing_stop_pct: null` (issue 26): in the falling month where the 10% stop
    fires (the test above), no stop sells anything, and the trader's status shows no level."""
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, risk={"trailing_stop_pct": None})
    assert cfg.risk.trailing_stop_pct is None
    replay(cfg, engine, *LUNA)
    exits, _ = _rebuys_after_stops(engine, "replay", pd.Timedelta(hours=24))
    assert exits == 0
    from cappuccino_core.trading.trader_views import trader_status_data
    positions = trader_status_data(cfg, engine, "replay")["positions"]
    assert positions and all(p["stop_level"] is None for p in positions)


def test_the_trader_does_not_buy_a_stopped_asset_while_it_cools_down(tmp_path, shared_data):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, risk={"reentry_cooldown_bars": 3})
    from cappuccino_core.data import load_bars
    from cappuccino_core.data.features import compute_features
    bars = load_bars(cfg, end="2022-05-10")
    feats = compute_features(bars, "v1")
    broker = SimBroker(engine, 100_000, 0.0025, 5)
    trader = Trader(cfg, broker, engine, "cool", Ensemble.load(current_dir(ensembles_dir(cfg)), cfg))
    hour = pd.Timedelta(hours=1)
    t0 = bars.index[-10]

    def bar(k):
        i = len(bars) - 10 + k
        broker.mark(dict(zip(SYMBOLS, bars.open[i + 1] if i + 1 < len(bars) else bars.close[i])))
        return trader.on_bar(bars.index[i], feats[:i + 1], bars.index[i] + hour * 1.01)
    assert bar(0) == "traded"
    held = set(broker.positions())
    assert held
    crash = {s: p * 0.5 for s, p in broker.prices.items()}
    broker.mark(crash)
    px = np.array([crash[s] for s in SYMBOLS])
    trader.exit_positions(trader.check_stops(px, px, px, px), t0 + hour * 1.5)
    assert not broker.positions() and set(trader.state.cooldown) == held
    bought = []
    for k in range(1, 6):
        bar(k)
        bought.append(set(broker.positions()) & held)
    # the exit was in the bar opening at t0 + 1h: that decision and the next two do not buy
    assert bought[:3] == [set(), set(), set()]
    assert any(bought[3:]), "bought again once the cooldown had passed"
    assert trader.state.cooldown == {}


def trader_on_real_bars(tmp_path, shared_data, name: str, **config):
    """A trader (`name`, the sim broker) of a published ensemble, the bars to 2022-05-10 and
    their features, and `decide(i)`: trade bar index i (negative: from the end) at its close."""
    from cappuccino_core.data import load_bars
    from cappuccino_core.data.features import compute_features
    cfg, engine, study = setup_trader_env(tmp_path, shared_data, **config)
    bars = load_bars(cfg, end="2022-05-10")
    feats = compute_features(bars, "v1")
    broker = SimBroker(engine, 100_000, 0.0025, 5)
    trader = Trader(cfg, broker, engine, name, Ensemble.load(current_dir(ensembles_dir(cfg)), cfg))

    def decide(i: int, on=None) -> str:
        end = len(bars) + i + 1 if i < 0 else i + 1
        broker.mark(dict(zip(SYMBOLS, bars.close[i])))
        return (on or trader).on_bar(bars.index[i], feats[:end],
                                     bars.index[i] + pd.Timedelta(hours=1.01))
    return cfg, engine, study, broker, trader, decide


def test_on_the_cash_fallback_the_trader_sells_and_waits(tmp_path, shared_data, storage_url):
    """On both backends: a sell-out's quantity comes from numpy arithmetic, and PostgreSQL
    under numpy 2 once refused it (psycopg2 rendered `np.float64(...)`)."""
    storage = {"url": storage_url}
    cfg, engine, _, broker, trader, decide = trader_on_real_bars(tmp_path, shared_data, "fb",
                                                                storage=storage)
    assert decide(-2) == "traded"
    assert broker.positions()
    # every trial now falls short of the bar: the sync publishes the fallback
    cfg = load_config(write_config(Path(cfg.config_dir), {
        "paths": {"state_dir": str(cfg.state_dir)},
        "data": {"csv_path": str(shared_data), "symbols": SYMBOLS},
        "ensemble": {"top_n": 4, "min_members": 1, "min_value": 10.0, "fallback": "cash"},
        "storage": storage}))
    assert sync(cfg, engine).status == "fallback"
    trader.reload(Ensemble.load(current_dir(ensembles_dir(cfg)), cfg))
    assert decide(-1) == "traded"
    assert broker.positions() == {}
    with engine.connect() as conn:  # every sell-out journaled, filled, none rejected
        rows = conn.execute(sa.text(
            "SELECT side, status FROM cappuccino_orders WHERE trader = 'fb' "
            "AND reason = 'rebalance' AND side = 'sell'")).all()
    assert rows and all(status == "filled" for _, status in rows)


def test_a_relative_space_ensemble_that_holds_sends_no_orders(tmp_path, shared_data, storage_url):
    """Action 0 in the relative space is "hold" (rl/actions.py): after a reload to members that
    hold everything, a bar sends no order; the decision is journaled with null (hold) targets,
    on both backends (NaN is not JSON), and a restart mid-bar reads it back."""
    cfg, engine, study, broker, trader, decide = trader_on_real_bars(
        tmp_path, shared_data, "rel", storage={"url": storage_url})
    assert decide(-3) == "traded"
    held = {s: p.qty for s, p in broker.positions().items()}
    assert held
    for i in range(4):  # untrained relative members: their means sit in the dead zone
        add_trial(study, cfg, 1.0 + i, seed=10 + i, action_space="relative")
    sync(cfg, engine)
    trader.reload(Ensemble.load(current_dir(ensembles_dir(cfg)), cfg))
    assert {m.spec.env.action_space for m in trader.ensemble.members} == {"relative"}
    orders_before = len(Journal(engine, "rel").order_rows(1000))
    assert decide(-2) == "traded"
    assert len(Journal(engine, "rel").order_rows(1000)) == orders_before
    assert {s: p.qty for s, p in broker.positions().items()} == held
    decision = Journal(engine, "rel").decision_rows()[-1]
    assert all(decision.target[s] is None for s in SYMBOLS)
    assert decision.target["cash"] is not None
    state = Journal(engine, "rel").load_state()
    assert state.decision["target"][:-1] == [None] * len(SYMBOLS)
    # a crash after the next bar's decision was saved: the restarted trader resumes it, holding
    last_bar = pd.Timestamp(decision.bar_time) + pd.Timedelta(hours=1)
    state.decision = {**state.decision, "bar": last_bar.isoformat()}
    Journal(engine, "rel").save_state(state, StateKey.DECISION)
    restarted = Trader(cfg, broker, engine, "rel", trader.ensemble)
    restarted.start()
    assert decide(-1, on=restarted) == "traded"
    assert len(Journal(engine, "rel").order_rows(1000)) == orders_before


def test_the_members_see_each_assets_room_to_its_stop(tmp_path, shared_data):
    """The trader shows the members what the environment showed them in training: per asset,
    the share of the stop's width left between the price and its stop level (`env.stop_room`),
    from the entry and peak it keeps."""
    from cappuccino_core.data import load_bars
    cfg, engine, _, broker, trader, decide = trader_on_real_bars(tmp_path, shared_data, "room")
    assert decide(-3) == "traded"
    held = sorted(broker.positions())
    assert held
    prices = dict(zip(SYMBOLS, load_bars(cfg, end="2022-05-10").close[-2]))
    for s in held:  # the price now stands 5% under the peak: half of a 10% stop's width
        trader.state.stops[s]["peak"] = prices[s] / 0.95
    seen = []
    original = trader.ensemble.target_weights
    trader.ensemble.target_weights = lambda *a: seen.append(a[4]) or original(*a)
    assert decide(-2) == "traded"
    room = dict(zip(SYMBOLS, seen[0]))
    for s in SYMBOLS:
        expected = (1 - 0.9 / 0.95) / 0.10 if s in held else 1.0
        assert room[s] == pytest.approx(expected, abs=1e-6), s


def test_a_cadence_of_4_decides_at_the_same_bars_in_replay_and_backtest(tmp_path, shared_data):
    """data.decision_bars 4: the trader (in a replay) decides only at 00:00, 04:00, ... UTC,
    exactly as many times as the backtest of the same window; stops still fire at any hour."""
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, data={
        "csv_path": str(shared_data), "symbols": SYMBOLS, "decision_bars": 4})
    start, end = "2022-05-05T02:00", "2022-05-13T01:00"  # first decision bar: 04:00
    result = replay(cfg, engine, start, end)
    decisions = Journal(engine, "replay").decision_rows()
    hours = [pd.Timestamp(d.bar_time).hour for d in decisions]
    assert hours[0] == 4 and all(h % 4 == 0 for h in hours)
    assert len(decisions) == result.window.decisions == (8 * 24 - 4) // 4
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    evaluation = evaluate(cfg, engine, [ens], "live", start, end)
    assert evaluation.window.lo == result.window.lo
    assert len(evaluation.results[0].weights) == len(decisions)
    stop_hours = {pd.Timestamp(f[6]).hour for f in Journal(engine, "replay").fill_rows()
                  if "-stop-" in f[0]}
    assert stop_hours and any(h % 4 for h in stop_hours)
