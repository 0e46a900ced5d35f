"""numpy's numbers cross into SQL as numbers, on both backends.

Under numpy 2, `repr(np.float64(0.5))` is `np.float64(0.5)`, and psycopg2 renders a float
with repr(): PostgreSQL answered `schema "np" does not exist` to a sell-out's quantity. Every
journal write runs here with numpy values where the trader's arithmetic produces them.
"""

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from cappuccino_core.broker.base import AssetRule, OrderState, OrderStatus, Position
from cappuccino_core.rl.env import EnvSettings
from cappuccino_core.storage.database import fills, open_app_db, orders
from cappuccino_core.trading.journal import Journal, StateKey, TraderState
from cappuccino_core.trading.orders import plan_rebalance

F, I = np.float64, np.int64


def test_numpy_2_renders_floats_as_psycopg2_once_failed_on():
    assert int(np.__version__.split(".")[0]) >= 2  # what the lock installs
    assert repr(F(0.5)) == "np.float64(0.5)"


def test_every_journal_write_takes_numpy_numbers(storage_url):
    engine = open_app_db(storage_url)
    journal = Journal(engine, "np")
    when = pd.Timestamp("2024-01-01 10:00", tz="UTC")
    assert journal.record_new("c-sell", "BTC/USD", "sell", F(0.6812345), "rebalance", when)
    journal.record_result(OrderState("c-sell", "BTC/USD", "sell", F(0.6812345), F(0.6812345),
                                     F(41_000.5), OrderStatus.FILLED, fee=F(69.8),
                                     fee_qty=F(0.0)))
    assert journal.record_new("c-stop", "ETH/USD", "sell", F(2.5), "stop", when)
    journal.record_result(OrderState("c-stop", "ETH/USD", "sell", F(2.5), F(1.25), F(2_200.0),
                                     OrderStatus.PARTIALLY_FILLED, fee=F(6.9)))
    journal.record_skipped("c-dust", "SOL/USD", "buy", F(1e-9), "rebalance", when, "too small")
    journal.record_decision(when, {"BTC/USD": F(0.25), "cash": F(0.75)}, {"BTC/USD": F(41_000)},
                            [], I(3), F(0.02), F(75_000.0), {"BTC/USD": F(0.1)},
                            {"BTC/USD": {"entry": F(40_000), "peak": F(41_000)}}, {})
    journal.snapshot(when, F(100_000.0), F(75_000.0), {"BTC/USD": F(0.1), "n": I(2)})
    journal.event("warning", "test", "numbers", {"qty": F(0.5), "n": I(7), "ok": np.bool_(True)})
    journal.save_state(TraderState(stops={"BTC/USD": {"entry": F(1.0), "peak": F(2.0)}},
                                   equity_peak=F(100_000.0), halted=np.bool_(False)),
                       StateKey.STOPS, StateKey.EQUITY_PEAK, StateKey.HALTED)
    with engine.connect() as conn:
        qty = conn.execute(sa.select(orders.c.qty).where(
            orders.c.client_order_id == "c-sell")).scalar()
        filled = conn.execute(sa.select(sa.func.sum(fills.c.qty))).scalar()
    assert qty == pytest.approx(0.6812345) and filled == pytest.approx(0.6812345 + 1.25)
    state = journal.load_state()
    assert state.stops == {"BTC/USD": {"entry": 1.0, "peak": 2.0}} and state.halted is False


def test_a_sell_out_is_planned_in_plain_floats():
    """The quantity of selling a whole position is the broker's own number, as a float."""
    symbols = ["BTC/USD", "ETH/USD"]
    rules = {s: AssetRule(s, 1e-9, 1e-9) for s in symbols}
    plan = plan_rebalance(np.array([0.0, 0.5, 0.5]), symbols,
                          {"BTC/USD": Position("BTC/USD", F(0.6812345), F(41_000.0))},
                          10_000.0, np.array([41_000.0, 2_000.0]), EnvSettings(), rules)
    sell = next(o for o in plan if o.side == "sell")
    assert sell.qty == 0.6812345 and type(sell.qty) is float
    assert all(type(o.qty) is float for o in plan)
