"""The real alpaca-py trading client against the emulator, with each fault switched on."""

import dataclasses
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from cappuccino_core.broker.alpaca import AlpacaBroker
from cappuccino_core.data.features import compute_features
from cappuccino_core.storage.database import fills, orders
from cappuccino_core.trading.orders import PlannedOrder, plan_rebalance
from cappuccino_core.trading.trader import Trader

from alpaca_emulator import AlpacaEmulator, RunningEmulator
from test_trading import SYMBOLS, setup_trader_env

PRICES = {"BTC/USD": 30_000.0, "ETH/USD": 2_000.0, "SOL/USD": 40.0}


@pytest.fixture
def emulator():
    with RunningEmulator(AlpacaEmulator(prices=dict(PRICES))) as running:
        yield running


def trading_setup(emulator, tmp_path, shared_data):
    """A published ensemble, bars to 2022-05-10, and the emulator priced at the last close."""
    from cappuccino_core.data import load_bars
    from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir
    from cappuccino_core.ensemble.serving import Ensemble
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    bars = load_bars(cfg, end="2022-05-10")
    emulator.emulator.prices.update(dict(zip(SYMBOLS, map(float, bars.close[-1]))))
    return cfg, engine, bars, Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)


def broker_for(emulator, **kw):
    return AlpacaBroker("key", "secret", SYMBOLS, url_override=emulator.url, retry_wait_s=0.01,
                        timeout_s=kw.pop("timeout_s", 2.0), poll_s=0.01, **kw)


def test_account_positions_assets_and_prices(emulator):
    b = broker_for(emulator)
    assert b.account().cash == 100_000.0
    rules = b.asset_rules(["BTC/USD", "ETH/USD", "XYZ/USD"])
    assert rules["BTC/USD"].min_order_size == 1e-6 and rules["BTC/USD"].min_trade_increment == 1e-9
    assert rules["BTC/USD"].price_increment == 1.0 and not rules["XYZ/USD"].tradable
    asked = [p for m, p, q in emulator.emulator.requests if p.startswith("/v2/assets")]
    assert asked == ["/v2/assets"]  # one list call for every symbol, no slash in a path
    assert b.latest_prices(SYMBOLS) == PRICES
    order = b.submit_market_order("ETH/USD", "buy", 2.5, "cap-t-1")
    assert order.status == "pending_new" and order.filled_qty == 0  # asynchronous
    done = b.wait_for_fill(order)
    assert done.status == "filled" and done.filled_qty == 2.5
    # the fee comes out of the asset (at the day's end): 2.5 x 0.25% less ETH, reported as
    # ETHUSD, mapped back
    assert b.positions()["ETH/USD"].qty == 2.5
    emulator.emulator.post_fees()
    assert b.positions()["ETH/USD"].qty == 2.5 - 0.00625
    assert b.get_order("cap-t-1").filled_avg_price == 2_000.0
    assert b.get_order("nope") is None


def test_rate_limits_and_server_errors_are_retried_without_doubling(emulator):
    emu = emulator.emulator
    b = broker_for(emulator)
    emu.fail_next(429)
    emu.fail_next(500, times=2)
    order = b.wait_for_fill(b.submit_market_order("BTC/USD", "buy", 0.1, "cap-t-2"))
    assert order.status == "filled"
    emu.post_fees()
    assert len(emu.orders) == 1 and b.positions()["BTC/USD"].qty == 0.09975


def test_a_timeout_after_acceptance_never_doubles_the_order(emulator):
    emu = emulator.emulator
    b = broker_for(emulator, timeout_s=0.5)
    emu.delay_next_order_response(2.0)  # accepted and filled; the answer comes too late
    order = b.wait_for_fill(b.submit_market_order("SOL/USD", "buy", 10, "cap-t-3"))
    assert order.status == "filled" and order.client_order_id == "cap-t-3"
    assert len(emu.posted_orders()) == 1 and len(emu.orders) == 1
    emu.post_fees()
    assert b.positions()["SOL/USD"].qty == 9.975
    # sending the same id again (a restart) is answered with the existing order
    again = b.submit_market_order("SOL/USD", "buy", 10, "cap-t-3")
    assert again.broker_id == order.broker_id and len(emu.orders) == 1


def test_rejections_come_back_as_rejected_orders(emulator):
    emu = emulator.emulator
    b = broker_for(emulator)
    big = b.submit_market_order("BTC/USD", "buy", 100, "cap-t-4")
    assert big.status == "rejected" and "insufficient balance" in big.reason
    tiny = b.submit_market_order("BTC/USD", "buy", 1e-8, "cap-t-5")
    assert tiny.status == "rejected" and "qty must be" in tiny.reason
    assert not emu.orders


def test_an_error_answer_for_an_order_that_executed_is_not_a_rejection(emulator):
    """Alpaca's paper API has answered an error to an order that went through
    (alpacahq/Alpaca-API#270): the order is looked up before it is called rejected."""
    emu = emulator.emulator
    b = broker_for(emulator)
    emu.execute_next_order_but_answer(403, "insufficient balance for USD")
    order = b.submit_market_order("ETH/USD", "buy", 1.5, "cap-t-270")
    assert order.status != "rejected" and order.broker_id
    assert b.wait_for_fill(order).status == "filled" and len(emu.orders) == 1
    emu.post_fees()
    assert b.positions()["ETH/USD"].qty == pytest.approx(1.5 * 0.9975)
    lookups = [q for m, p, q in emu.requests if p == "/v2/orders:by_client_order_id"]
    assert lookups[0]["client_order_id"] == "cap-t-270"


def test_a_cancel_is_pending_until_alpaca_confirms_it(emulator):
    emu = emulator.emulator
    b = broker_for(emulator, fill_timeout_s=0.1)
    emu.end_next_order("new", fraction=0.25)  # stalls a quarter filled
    done = b.wait_for_fill(b.submit_market_order("ETH/USD", "buy", 4, "cap-t-cx"))
    assert done.status == "canceled" and done.filled_qty == pytest.approx(1.0)
    states = [o["status"] for o in emu.orders.values()]
    assert states == ["canceled"]
    deletes = [p for m, p, q in emu.requests if m == "DELETE"]
    assert len(deletes) == 1  # and it went through pending_cancel: one DELETE, then lookups


def test_a_cancel_that_loses_the_race_to_a_fill_follows_the_fill(emulator):
    """Read `new`, the order fills, the DELETE is answered 422 "not cancelable": the fill is
    the truth, and the bar goes on."""
    emu = emulator.emulator
    b = broker_for(emulator, fill_timeout_s=0.1)
    emu.end_next_order("new", fraction=0.0)
    emu.fill_before_next_cancel()
    done = b.wait_for_fill(b.submit_market_order("SOL/USD", "buy", 10, "cap-t-race"))
    assert done.status == "filled" and done.filled_qty == 10


def test_the_average_fill_price_is_weighted_and_each_fill_keeps_its_own_price(emulator,
                                                                             tmp_path):
    from cappuccino_core.storage.database import open_app_db
    from cappuccino_core.trading.journal import Journal
    emu = emulator.emulator
    b = broker_for(emulator)
    journal = Journal(open_app_db(f"sqlite:///{tmp_path / 'j.db'}"), "t")
    emu.partial_next_order(0.25)
    order = b.submit_market_order("ETH/USD", "buy", 4, "cap-t-avg")
    journal.record_new("cap-t-avg", "ETH/USD", "buy", 4, "rebalance",
                       pd.Timestamp("2024-01-01", tz="UTC"))
    b.get_order("cap-t-avg")  # new
    journal.record_result(b.get_order("cap-t-avg"))  # 1 ETH at 2,000
    emu.prices["ETH/USD"] = 2_400.0
    done = b.wait_for_fill(order)  # the other 3 at 2,400
    journal.record_result(done)
    assert done.filled_avg_price == pytest.approx((1 * 2_000 + 3 * 2_400) / 4)
    with journal.engine.connect() as conn:
        rows = conn.execute(sa.select(fills.c.qty, fills.c.price).order_by(fills.c.id)).all()
    assert [(q, round(p, 6)) for q, p in rows] == [(1.0, 2_000.0), (3.0, 2_400.0)]


def test_crypto_buying_power_is_the_non_marginable_one(emulator):
    b = broker_for(emulator)
    account = b.account()
    assert account.buying_power == account.cash == 100_000.0  # not the margin figure


def test_partial_fills_are_followed_to_the_end(emulator):
    emu = emulator.emulator
    b = broker_for(emulator)
    emu.partial_next_order(0.4)
    first = b.submit_market_order("ETH/USD", "buy", 5, "cap-t-6")
    b.get_order("cap-t-6")  # new
    part = b.get_order("cap-t-6")
    assert part.status == "partially_filled" and part.filled_qty == pytest.approx(2.0)
    done = b.wait_for_fill(first)
    assert done.status == "filled" and done.filled_qty == pytest.approx(5.0)


def test_trader_on_alpaca_trades_a_bar_and_a_stop_with_real_orders(emulator, tmp_path,
                                                                    shared_data):
    """The whole trader on the emulated paper account: orders are really sent; a restart
    re-derives the same client order ids and sends nothing twice; a stop exit sells the
    whole position."""
    cfg, engine, bars, ens = trading_setup(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    broker = broker_for(emulator)
    trader = Trader(cfg, broker, engine, "paper", ens)
    trader.start()
    bar_time, now = bars.index[-1], bars.index[-1] + pd.Timedelta(hours=1, seconds=10)
    emu.fail_next(503)
    assert trader.on_bar(bar_time, compute_features(bars, "v1"), now) == "traded"
    sent = len(emu.posted_orders())
    assert sent >= 2 and len(emu.orders) == sent
    with engine.connect() as conn:
        statuses = conn.execute(sa.select(orders.c.status)).scalars().all()
        assert set(statuses) == {"filled"} and len(statuses) == sent
        assert conn.execute(sa.select(sa.func.count()).select_from(fills)).scalar() == sent
    # the journal's fills (each buy less the fee taken from the asset), plus the fees the
    # broker has yet to take, add up to the broker's positions, to the last increment
    broker_held = {s: p.qty for s, p in broker.positions().items()}
    owed, _ = trader.journal.owed()
    assert owed and {s: q + owed[s] for s, q in trader.journal.positions().items()} == \
        pytest.approx(broker_held, abs=1e-9)
    # a restart: new objects, same database and account; the bar is not traded again
    again = Trader(cfg, broker_for(emulator), engine, "paper", ens)
    again.start()
    assert again.on_bar(bar_time, compute_features(bars, "v1"), now) == "already processed"
    assert len(emu.posted_orders()) == sent
    # a crash: prices fall 12% from the peak; the next tick exits every position whole
    held = {s: p.qty for s, p in broker.positions().items()}
    crash = {s: p * 0.88 for s, p in emu.prices.items()}
    emu.prices.update(crash)
    px = np.array([crash[s] for s in SYMBOLS])
    exits = again.check_stops(px, px, px, px)
    assert {s for s, _ in exits} == set(held)
    again.exit_positions(exits, now + pd.Timedelta(minutes=5))
    assert broker.positions() == {}
    stop_orders = [o for o in emu.posted_orders() if "-stop-" in o["client_order_id"]]
    assert {o["symbol"]: float(o["qty"]) for o in stop_orders} == held


def test_restart_mid_bar_on_alpaca_sends_nothing_twice_and_reconciles(emulator, tmp_path,
                                                                       shared_data, caplog):
    from test_trading import CrashAfter
    cfg, engine, bars, ens = trading_setup(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    feats = compute_features(bars, "v1")
    bar_time, now = bars.index[-1], bars.index[-1] + pd.Timedelta(hours=1, seconds=10)
    crashing = Trader(cfg, CrashAfter(broker_for(emulator), 1), engine, "paper", ens)
    crashing.start()
    with pytest.raises(SystemExit):
        crashing.on_bar(bar_time, feats, now)
    assert len(emu.orders) == 1
    emu.delay_next_order_response(1.5)  # and the first answer after the restart is lost
    restarted = Trader(cfg, broker_for(emulator, timeout_s=0.5), engine, "paper", ens)
    restarted.start()
    assert restarted.on_bar(bar_time, feats, now) == "traded"
    ids = [o["client_order_id"] for o in emu.orders.values()]
    assert len(ids) == len(set(ids)) >= 2  # every order once at the broker
    # a trader that lost its state adopts the broker's positions at start
    fresh = Trader(cfg, broker_for(emulator), engine, "fresh", ens)
    fresh.start()
    assert set(fresh.state.stops) == set(broker_for(emulator).positions())
    assert "held at the broker with no stop state" in caplog.text


def test_orders_are_sized_in_whole_increments_without_float_noise(emulator, tmp_path,
                                                                  shared_data):
    """Alpaca refuses a quantity that is not a whole number of the pair's increment; the
    trader's plan rounds down to the increment in decimal arithmetic."""
    from cappuccino_core.broker.base import AssetRule, Position
    from cappuccino_core.rl.env import EnvSettings
    emu = emulator.emulator
    emu.min_trade_increment = "0.0001"  # the documented BTC/USD pair
    b = broker_for(emulator)
    noisy = b.submit_market_order("BTC/USD", "buy", 0.8317411010000001, "cap-t-noise")
    assert noisy.status == "rejected" and "increments of 0.0001" in noisy.reason
    rules = {s: AssetRule(s, 1e-4, 1e-4) for s in SYMBOLS}
    plan = plan_rebalance(np.array([0.2, 0.1, 0.05, 0.65]), SYMBOLS,
                          {"ETH/USD": Position("ETH/USD", 1.23456789, 2000.0)}, 90_000.0,
                          np.array([30_000.0, 2_000.0, 40.0]), EnvSettings(), rules)
    assert plan and all(str(o.qty) == str(round(o.qty, 4)) for o in plan)  # no noise
    for k, o in enumerate(plan):
        sent = b.wait_for_fill(b.submit_market_order(o.symbol, o.side, o.qty, f"cap-t-plan-{k}"))
        assert sent.status == "filled", (o, sent.reason)
    # sent as decimal strings, exactly the increments planned
    assert all(isinstance(q["qty"], str) and "e" not in q["qty"] and len(q["qty"].split(".")[-1]) <= 4
               for q in emu.posted_orders()[1:])


# --- the order lifecycle and the rate limit, as Alpaca behaves ------------------------------

@pytest.mark.parametrize("status, final", [
    ("expired", "expired"), ("canceled", "canceled"), ("replaced", "replaced"),
    ("done_for_day", "canceled"), ("stopped", "canceled"), ("suspended", "canceled"),
    ("held", "canceled")])
def test_every_terminal_status_is_handled_with_its_partial_fill(emulator, status, final):
    """An order that ends in a terminal status keeps what it filled; one that stalls in a
    status that is not terminal is followed until the fill timeout, then canceled."""
    emu = emulator.emulator
    b = broker_for(emulator, fill_timeout_s=0.3)
    emu.end_next_order(status, fraction=0.5)
    done = b.wait_for_fill(b.submit_market_order("ETH/USD", "buy", 4, f"cap-t-{status}"))
    assert done.status == final and done.final
    assert done.filled_qty == pytest.approx(2.0) and done.filled_avg_price == 2_000.0
    emu.post_fees()
    assert b.positions()["ETH/USD"].qty == pytest.approx(2.0 * 0.9975)


def test_polling_is_bounded_and_backs_off(emulator):
    emu = emulator.emulator
    b = broker_for(emulator, fill_timeout_s=1.0, max_poll_s=0.2)
    emu.end_next_order("held")  # never fills
    b.wait_for_fill(b.submit_market_order("ETH/USD", "buy", 1, "cap-t-stall"))
    lookups = [p for m, p, q in emu.requests if p == "/v2/orders:by_client_order_id"]
    # 0.01, 0.02 ... doubling to 0.2 s inside 1 s: about 10, never one per poll_s
    assert 5 <= len(lookups) <= 14


def test_a_429_waits_as_long_as_the_server_says(emulator):
    emu = emulator.emulator
    b = broker_for(emulator)  # its own backoff would retry after 0.01 s
    emu.fail_next(429, retry_after=1)
    began = time.monotonic()
    assert b.account().cash == 100_000.0
    assert time.monotonic() - began >= 1.0


def test_a_spent_rate_window_is_waited_out_until_its_reset(emulator):
    """The server's window is spent (our own limiter set far above it): the 429's
    X-Ratelimit-Reset is honoured instead of retrying into more 429s."""
    emu = emulator.emulator
    emu.rate_limit, emu.rate_window_s = 3, 1.5
    b = broker_for(emulator, max_retries=2)
    for _ in range(6):
        assert b.account().cash == 100_000.0


def test_the_client_keeps_under_the_rate_limit(emulator):
    emu = emulator.emulator
    emu.rate_limit, emu.rate_window_s = 5, 1.0
    b = broker_for(emulator, requests_per_minute=5, rate_window_s=1.0)
    began = time.monotonic()
    for _ in range(12):
        b.account()
    assert time.monotonic() - began >= 2.0  # 12 requests at 5 per second
    assert emu.throttled == 0  # the server never had to say 429


def test_a_buy_fee_is_measured_from_the_asset_and_a_full_exit_sells_the_exact_position(
        emulator, tmp_path, shared_data):
    cfg, engine, bars, ens = trading_setup(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    emu.fees_posted_later = False  # the account pays the fee at the fill: it is measured
    emu.prices["BTC/USD"] = 30_000.0
    trader = Trader(cfg, broker_for(emulator), engine, "fees", ens)
    when = pd.Timestamp("2024-01-01 00:00", tz="UTC")
    trader._execute([PlannedOrder("BTC/USD", "buy", 0.1, "rebalance")], when)
    with engine.connect() as conn:
        fill = conn.execute(sa.select(fills)).one()
    assert (fill.qty, fill.fee_qty) == (0.1, pytest.approx(0.00025))
    assert fill.fee == pytest.approx(0.00025 * 30_000.0)
    assert trader.journal.positions() == {"BTC/USD": pytest.approx(0.09975, abs=1e-12)}
    held = trader.broker.positions()["BTC/USD"].qty
    trader._execute([PlannedOrder("BTC/USD", "sell", held, "stop")], when)
    assert emu.posted_orders()[-1]["qty"] == "0.09975" and not emu.positions
    with engine.connect() as conn:
        sell = conn.execute(sa.select(fills).where(fills.c.side == "sell")).one()
    assert sell.fee == pytest.approx(0.09975 * 30_000.0 * 0.0025)
    assert trader.journal.positions() == {"BTC/USD": pytest.approx(0.0, abs=1e-12)}


def test_an_order_below_the_minimum_is_journaled_as_skipped(emulator, tmp_path, shared_data):
    cfg, engine, bars, ens = trading_setup(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    trader = Trader(cfg, broker_for(emulator), engine, "skips", ens)
    rule = trader.rules["BTC/USD"]
    plan = plan_rebalance(np.array([1e-9, 0.0, 0.0, 1.0]), SYMBOLS, {}, 1_000.0,
                          np.array([30_000.0, 2_000.0, 40.0]),
                          dataclasses.replace(trader.settings, min_order_notional=0.0,
                                              min_rebalance_weight=0.0), trader.rules)
    assert [o.skip is not None for o in plan] == [True] and plan[0].qty < rule.min_order_size
    trader._execute(plan, pd.Timestamp("2024-01-01", tz="UTC"))
    assert not emu.posted_orders()
    with engine.connect() as conn:
        row = conn.execute(sa.select(orders)).one()
    assert row.status == "skipped" and row.symbol == "BTC/USD"


def test_a_quiet_asset_never_holds_back_the_others_and_its_late_print_is_fetched(
        tmp_path, shared_data, monkeypatch):
    """Alpaca emits no bar for an hour without trades: the live loop trades the newest bar
    with the quiet asset flat at its last close (flagged, counted in status), and the cache
    asks for the newest bars again, so a late print is picked up."""
    from cappuccino_core.operations import status
    from cappuccino_core.broker.sim import SimBroker
    from cappuccino_core.data import load_bars
    from cappuccino_core.data.csv_source import CsvSource
    from cappuccino_core.storage.database import decisions
    from cappuccino_core.trading.live import LiveLoop
    from test_live import FakeClock, RecordingNotifier
    csv = CsvSource(shared_data, "1h", 3600)
    last = pd.Timestamp("2022-05-10 00:00", tz="UTC")
    history = {s: csv.fetch(s, last - pd.Timedelta(days=40), last + pd.Timedelta(hours=1))
               for s in SYMBOLS}
    late_print = history["SOL/USD"].iloc[-1].to_dict()
    history["SOL/USD"] = history["SOL/USD"].iloc[:-1]  # SOL printed nothing in the last hour
    with RunningEmulator(AlpacaEmulator(bars=history)) as running:
        cfg, engine, _ = setup_trader_env(tmp_path, shared_data,
                                          data={"source": "alpaca", "symbols": SYMBOLS},
                                          broker={"url_override": running.url})
        now = last + pd.Timedelta(hours=1, seconds=20)
        broker = SimBroker(engine, 100_000, cfg.broker.taker_fee, cfg.broker.slippage_bps)
        broker.mark({s: float(history[s]["close"].iloc[-1]) for s in SYMBOLS})
        loop = LiveLoop(cfg, broker, engine, RecordingNotifier(),
                        FakeClock(now.tz_localize(None)))
        loop.start()
        loop.cycle()
        assert loop.trader.last_bar == last  # traded, not held back by SOL
        with engine.connect() as conn:
            quiet = conn.execute(sa.select(decisions.c.quiet).where(
                decisions.c.bar_time == last.to_pydatetime())).scalar()
        assert quiet == ["SOL/USD"]
        monkeypatch.setattr(pd.Timestamp, "now", classmethod(lambda cls, tz=None: now))
        assert status._trader(engine, cfg, "paper")["quiet_bars_24h"] == 1
        bars = load_bars(cfg, start=last - pd.Timedelta(hours=2), end=last + pd.Timedelta(hours=1),
                         now=now)
        assert list(bars.filled[-1]) == [False, False, True]
        running.emulator.add_bar("SOL/USD", last, late_print)  # the late print arrives
        bars = load_bars(cfg, start=last - pd.Timedelta(hours=2), end=last + pd.Timedelta(hours=1),
                         now=now + pd.Timedelta(minutes=5))
        assert list(bars.filled[-1]) == [False, False, False]
        assert bars.close[-1][2] == pytest.approx(late_print["close"])


def test_config_check_warns_when_training_and_trading_venues_differ(tmp_path, shared_data,
                                                                     capsys):
    from cappuccino_core import cli
    from conftest import write_config
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)  # trained on Binance USDT files
    assert cli.main(["config", "check", "--config-dir", str(cfg.config_dir)]) == 0
    assert "warning" not in capsys.readouterr().err  # trained and traded on the same bars
    write_config(Path(cfg.config_dir), {"paths": {"state_dir": str(cfg.state_dir)},
                                  "data": {"source": "alpaca", "symbols": SYMBOLS},
                                  "risk": {"trailing_stop_pct": 0.10},
                                  "broker": {"kind": "alpaca"}})
    assert cli.main(["config", "check", "--config-dir", str(cfg.config_dir)]) == 0
    err = capsys.readouterr().err
    assert "trained on CSV bars in" in err and "(USDT quotes)" in err
    assert "trades on Alpaca crypto bars (USD quotes)" in err and "reconcile" in err


class EmulatedMarket(AlpacaBroker):
    """The Alpaca broker, with the replay's clock moving the emulated market's prices."""

    def __init__(self, emulator, **kw):
        super().__init__("key", "secret", SAMPLE_SYMBOLS, url_override=emulator.url,
                         poll_s=0.001, max_poll_s=0.01, retry_wait_s=0.01,
                         requests_per_minute=1_000_000, **kw)
        self.emu = emulator.emulator

    def mark(self, prices, at=None):
        """The replay's clock: its prices, and a new day posts the day before's fees."""
        self.emu.prices.update({s: float(p) for s, p in prices.items()})
        if at is not None:
            self.emu.new_day(f"{at:%Y-%m-%d}")


SAMPLE_SYMBOLS = ["BTC/USD", "ETH/USD", "LTC/USD"]


@pytest.mark.parametrize("posted_later", [False, True], ids=["fees-at-fill", "fees-posted-later"])
def test_a_replay_of_the_bundled_sample_through_alpaca_keeps_the_journal_equal_to_the_broker(
        tmp_path, posted_later):
    """Every bar of a replay of the bundled sample through AlpacaBroker and the emulator (fee
    in the asset, asynchronous fills, sizes in increments, each day's fees booked as CFEE
    activities at its end, and paid only then when `posted_later`): the journal's positions
    and cash, plus the fees the broker has yet to take, equal the broker's to the last
    increment; once the last bookings arrive they equal them outright, every fee is the
    broker's booking, and reconcile explains every cent, bar by bar."""
    from cappuccino_core.trading.reconcile import reconcile
    from cappuccino_core.trading.replay import replay
    emu = AlpacaEmulator(prices={s: 1.0 for s in SAMPLE_SYMBOLS}, rate_limit=1_000_000,
                         fees_posted_later=posted_later, today="2023-12-01")
    with RunningEmulator(emu) as running:
        cfg, engine, _ = setup_trader_env(tmp_path, None, data={"symbols": SAMPLE_SYMBOLS})
        broker = EmulatedMarket(running)
        checked, traders = [], []

        def journal_equals_broker(t, trader):
            held = {s: p.qty for s, p in broker.positions().items()}
            owed, owed_usd = trader.journal.owed()
            mine = {s: q + owed.get(s, 0.0) for s, q in trader.journal.positions().items()}
            assert {s: q for s, q in mine.items() if abs(q) > 1e-12} == pytest.approx(
                held, abs=1e-9), trader.last_bar
            assert trader.journal.cash() + owed_usd == pytest.approx(broker.account().cash,
                                                                     abs=1e-6)
            checked.append((set(held), owed_usd > 0 or any(owed.values())))
            traders[:] = [trader]
        replay(cfg, engine, "2023-12-01", "2023-12-15", name="alpaca", on_bar=journal_equals_broker,
               broker=broker)
        trader = traders[0]
        last = pd.Timestamp(trader.last_bar)
        emu.new_day(f"{last + pd.Timedelta(days=1):%Y-%m-%d}")  # the last day's fees post
        trader._book_fees(last + pd.Timedelta(hours=1))          # and are read at the next bar
        journal = trader.journal
        assert journal.owed() == ({}, 0.0)
        held = {s: p.qty for s, p in broker.positions().items()}
        assert {s: q for s, q in journal.positions().items() if abs(q) > 1e-12} == \
            pytest.approx(held, abs=1e-9)
        assert journal.cash() == pytest.approx(broker.account().cash, abs=1e-6)
    assert len(checked) >= 300 and any(h for h, _ in checked)  # it held positions, and was checked
    # fees owed between a fill and its day's end, when they are posted later; never otherwise
    assert any(o for _, o in checked) == posted_later
    # positions sold out whole: the broker's exact quantity, no dust left behind
    assert any(a - b for (a, _), (b, _) in zip(checked, checked[1:]))
    assert all(p["qty"] >= Decimal("0.000001") for p in emu.positions.values())
    bases = journal.fee_bases()
    assert bases["booked"] > 0 and bases["estimated"] == bases["measured"] == 0, bases
    rec = reconcile(cfg, engine, "alpaca")
    assert abs(rec.totals()["unexplained"]) < 0.01
    assert max(abs(r.unexplained) for r in rec.rows) < 0.01  # every bar, not just the sum
    posting = [r.causes["fee posting"] for r in rec.rows]
    assert any(abs(x) > 0.01 for x in posting) == posted_later


def test_a_request_that_timed_out_waiting_for_a_thread_is_never_sent():
    """Every worker busy on a hung request: a call that times out in the queue must not go
    out later, when a worker frees up (an order sent minutes late, after its lookup)."""
    import threading

    import requests

    from cappuccino_core.broker.alpaca_http import AlpacaCalls
    calls = AlpacaCalls(timeout_s=0.2, max_retries=0)
    release = threading.Event()
    sent = []
    hung = [threading.Thread(target=lambda: _swallow(calls.once, "hung", release.wait, 5))
            for _ in range(4)]
    for t in hung:
        t.start()
    time.sleep(0.1)  # the four workers are taken
    with pytest.raises(requests.Timeout):
        calls.once("order", sent.append, "late order")
    release.set()
    for t in hung:
        t.join()
    calls.pool.shutdown(wait=True)
    assert sent == []


def _swallow(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the hung calls time out; that is not what is tested
        pass


def test_the_pieces_of_alpaca_py_the_clients_rely_on_are_there():
    """The clients build alpaca-py's RESTClient with its constructor arguments, call these
    methods, and send the order's quantity as our decimal string: an SDK release that changes
    any of it fails here, not in trading (setup.cfg bounds alpaca-py above as well)."""
    import inspect

    from alpaca.common.rest import RESTClient
    from alpaca.data.historical import CryptoHistoricalDataClient
    from alpaca.trading.client import TradingClient

    from cappuccino_core.broker.alpaca import DecimalMarketOrder
    params = inspect.signature(RESTClient.__init__).parameters
    for name in ("api_key", "secret_key", "api_version", "base_url", "sandbox", "raw_data",
                 "retry_exception_codes"):
        assert name in params, name
    for name in ("get_account", "get_all_positions", "get_all_assets", "get_order_by_client_id",
                 "get_orders", "cancel_order_by_id", "submit_order", "get"):
        assert callable(getattr(TradingClient, name, None)), name
    # the account activities (fee bookings) go through the public `get(path, data)`
    assert list(inspect.signature(RESTClient.get).parameters)[:3] == ["self", "path", "data"]
    for name in ("get_crypto_latest_trade", "get_crypto_bars"):
        assert callable(getattr(CryptoHistoricalDataClient, name, None)), name
    order = DecimalMarketOrder(symbol="BTC/USD", qty="0.000000003", side="buy",
                               time_in_force="gtc", client_order_id="cap-x")
    fields = order.to_request_fields()
    assert fields["qty"] == "0.000000003" and fields["client_order_id"] == "cap-x"
    assert fields["type"] == "market"


def test_asset_rules_are_asked_for_again_daily_and_after_a_refusal_that_names_them(
        emulator, tmp_path, shared_data):
    cfg, engine, bars, ens = trading_setup(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    broker = broker_for(emulator)
    asked = lambda: sum(p == "/v2/assets" for m, p, q in emu.requests)  # noqa: E731
    broker.asset_rules(SYMBOLS)
    broker.asset_rules(SYMBOLS)
    assert asked() == 1  # cached within the day
    broker._assets_at -= 25 * 3600
    broker.asset_rules(SYMBOLS)
    assert asked() == 2  # a day on: asked again
    # Alpaca coarsens the increment; the trader's next orders are refused for it
    trader = Trader(cfg, broker, engine, "paper", ens)
    trader.start()
    emu.min_trade_increment = "0.001"
    feats = compute_features(bars, "v1")
    hour = pd.Timedelta(hours=1, seconds=10)
    trader.on_bar(bars.index[-2], feats[:-1], bars.index[-2] + hour)
    assert any("increments of 0.001" in r for r in trader.rejected_in_bar)
    before = asked()
    trader.on_bar(bars.index[-1], feats, bars.index[-1] + hour)
    assert asked() == before + 1  # the refusal named the rules: asked for them again
    assert trader.rules["BTC/USD"].min_trade_increment == 0.001
    assert not trader.rejected_in_bar  # the orders sized to the new increment went through


def _bought(emulator, tmp_path, shared_data):
    """A trader on the emulated account that has traded one bar (it holds positions)."""
    cfg, engine, bars, ens = trading_setup(emulator, tmp_path, shared_data)
    broker = broker_for(emulator)
    trader = Trader(cfg, broker, engine, "paper", ens)
    trader.start()
    now = bars.index[-1] + pd.Timedelta(hours=1, seconds=10)
    emulator.emulator.today = f"{now:%Y-%m-%d}"  # the emulated venue's day is the trader's
    assert trader.on_bar(bars.index[-1], compute_features(bars, "v1"), now) == "traded"
    assert broker.positions()
    return cfg, trader, broker, now


def _crash(emu, fall: float = 0.88) -> np.ndarray:
    emu.prices.update({s: p * fall for s, p in emu.prices.items()})
    return np.array([emu.prices[s] for s in SYMBOLS])


def test_dust_below_the_minimum_order_value_is_left_shown_and_never_sent(emulator, tmp_path,
                                                                         shared_data, capsys):
    """A remnant worth less than Alpaca's $1 minimum cannot be sold: no order for it (it
    would be refused at every check), no stop, and `trader status` shows it."""
    from cappuccino_core import cli
    cfg, trader, broker, now = _bought(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    dusty = next(iter(broker.positions()))
    plain = dusty.replace("/", "")
    emu.positions[plain]["qty"] = Decimal("0.5") / Decimal(repr(emu.prices[dusty]))  # $0.50
    emu.positions[plain]["qty"] = emu.positions[plain]["qty"].quantize(Decimal("1e-9"))
    px = _crash(emu)
    exits = trader.check_stops(px, px, px, px)
    assert dusty in {s for s, _ in exits}
    trader.exit_positions(exits, now + pd.Timedelta(minutes=5))
    sent = [o["symbol"] for o in emu.posted_orders() if "-stop-" in o["client_order_id"]]
    assert dusty not in sent and sent  # the others were sold
    assert set(broker.positions()) == {dusty} and dusty in trader.state.dust
    assert dusty not in trader.state.stops  # nothing a stop could do
    assert trader.check_stops(px * 0.5, px * 0.5, px * 0.5, px * 0.5) == []  # never again
    assert cli.main(["trader", "status", "--name", "paper", "--config-dir",
                     cfg.config_dir]) == 0
    assert f"dust (below the venue's minimum order value, not sold): {dusty}" in \
        capsys.readouterr().out


def test_a_refused_stop_exit_keeps_its_stop_and_the_next_check_sells(emulator, tmp_path,
                                                                    shared_data):
    cfg, trader, broker, now = _bought(emulator, tmp_path, shared_data)
    emu = emulator.emulator
    before = {s: dict(v) for s, v in trader.state.stops.items()}
    px = _crash(emu)
    exits = trader.check_stops(px, px, px, px)
    first = exits[0][0]
    emu.reject_next_order(403, "account is restricted from trading")
    trader.exit_positions(exits, now + pd.Timedelta(minutes=5))
    assert set(broker.positions()) == {first}  # refused: still held
    assert trader.state.stops[first]["peak"] == before[first]["peak"]  # its stop kept
    assert first not in trader.state.cooldown
    again = trader.check_stops(px, px, px, px)
    assert [s for s, _ in again] == [first]
    trader.exit_positions(again, now + pd.Timedelta(minutes=6))
    assert broker.positions() == {}


def test_the_configured_minimum_is_never_below_alpacas(tmp_path):
    from cappuccino_core.common.config import ConfigError, load_config
    from conftest import write_config
    d = write_config(tmp_path, {"broker": {"kind": "alpaca", "min_order_notional": 0.5},
                                "data": {"source": "alpaca"}})
    with pytest.raises(ConfigError, match="broker.min_order_notional"):
        load_config(d)


def test_a_rebalance_plans_nothing_for_dust():
    from cappuccino_core.broker.base import AssetRule, Position
    from cappuccino_core.rl.env import EnvSettings
    from cappuccino_core.trading.orders import dust
    rules = {s: AssetRule(s, 1e-9, 1e-9, min_notional=1.0) for s in SYMBOLS}
    held = {"BTC/USD": Position("BTC/USD", 0.00002, 30_000.0),  # $0.60: dust
            "ETH/USD": Position("ETH/USD", 1.0, 2_000.0)}
    prices = np.array([PRICES[s] for s in SYMBOLS])
    assert dust(held, PRICES, rules) == {"BTC/USD": 0.00002}
    plan = plan_rebalance(np.array([0.0, 0.0, 0.0, 1.0]), SYMBOLS, held, 1_000.0, prices,
                          EnvSettings(), rules)
    assert [(o.symbol, o.side) for o in plan] == [("ETH/USD", "sell")]


def test_fees_posted_later_are_estimated_until_the_broker_books_them(emulator, tmp_path,
                                                                    shared_data):
    """With Alpaca posting fees at the end of the day, a fill moves the account by the trade
    alone: the fee measured from it would be 0. The configured rate stands in, marked
    estimated and owed; once the day's CFEE activities are posted, the next bar books them:
    each fill then carries the broker's fee, nothing is owed, the journal's positions equal
    the broker's, and the daily summary counts the fees booked."""
    from cappuccino_core.operations.summary import compose
    emu = emulator.emulator
    emu.fees_posted_later = True
    emu.fee_rate = 0.0022  # the venue's tier differs from the configured 0.25 %
    cfg, trader, broker, now = _bought(emulator, tmp_path, shared_data)

    def recorded():
        with trader.journal.engine.connect() as conn:
            return conn.execute(sa.select(fills.c.qty, fills.c.price, fills.c.fee,
                                          fills.c.fee_basis, fills.c.fee_deferred)).all()
    rows = recorded()
    assert rows and all(fee == pytest.approx(q * p * 0.0025, rel=1e-3) and basis == "estimated"
                        and deferred for q, p, fee, basis, deferred in rows)
    held = {s: p.qty for s, p in broker.positions().items()}
    owed, _ = trader.journal.owed()
    assert trader.journal.positions() != pytest.approx(held, abs=1e-12)  # owed, not taken
    assert {s: q + owed[s] for s, q in trader.journal.positions().items()} == pytest.approx(
        held, abs=2e-9)
    trader._book_fees(pd.Timestamp(trader.last_bar) + pd.Timedelta(hours=1))
    assert all(basis == "estimated" for *_, basis, _ in recorded())  # nothing posted yet
    emu.new_day("2099-01-01")  # the day ends: its fees are posted as CFEE activities
    trader._book_fees(pd.Timestamp(trader.last_bar) + pd.Timedelta(hours=1))
    rows = recorded()
    assert all(fee == pytest.approx(q * p * 0.0022, rel=1e-3) and basis == "booked"
               for q, p, fee, basis, _ in rows)
    assert trader.journal.owed() == ({}, 0.0)
    held = {s: p.qty for s, p in broker.positions().items()}
    assert trader.journal.positions() == pytest.approx(held, abs=2e-9)
    assert trader.journal.cash() == pytest.approx(broker.account().cash, abs=1e-6)
    status = {"traders": {"paper": {"mode": "live", "equity": 1.0, "drawdown": 0.0,
                                    "positions": len(held)}},
              "ensemble": None, "training": None, "active_study": "live",
              "health": {"level": "ok", "problems": []}}
    text = compose(cfg, trader.journal.engine, status, (now + pd.Timedelta(hours=2)).to_pydatetime())
    assert f"{len(rows)} fills, 0 stop exits; fees {len(rows)} booked by the broker, 0 estimated" in text


def test_a_booking_with_no_fill_is_reported_and_read_once(emulator, tmp_path, shared_data):
    """A CFEE for a day the journal has no fill of (a fill it never saw, or another day's
    clock) is not put on some other fill: it is said, once, as an event."""
    emu = emulator.emulator
    cfg, trader, broker, now = _bought(emulator, tmp_path, shared_data)
    for f in emu.pending_fees:
        f["date"] = "2001-01-01"  # not the trader's day: nothing of the journal's matches
    emu.new_day("2099-01-01")
    seen = pd.Timestamp(trader.last_bar)
    first = trader.journal.book_fees(broker.fee_bookings("2000-12-31"), seen)
    again = trader.journal.book_fees(broker.fee_bookings("2000-12-31"), seen)
    assert len(first) == len(emu.activities) > 0 and "no fill of that day" in first[0]
    assert again == []  # every booking was read before: said once
    with trader.journal.engine.connect() as conn:
        kinds = conn.execute(sa.select(fills.c.fee_basis)).scalars().all()
    assert kinds and set(kinds) == {"estimated"}  # estimated at the fill, left as it was
