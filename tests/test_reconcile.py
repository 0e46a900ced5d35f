"""`cappuccino reconcile`: live vs replay, every difference found and put on its cause."""

import pandas as pd
import pytest

from cappuccino_core import cli
from cappuccino_core.broker.base import AssetRule
from cappuccino_core.broker.sim import SimBroker
from cappuccino_core.trading.orders import client_order_id
from cappuccino_core.trading.reconcile import reconcile
from cappuccino_core.trading.replay import replay

from test_trading import SYMBOLS, setup_trader_env

HOUR = pd.Timedelta(hours=1)
WINDOW = ("2022-05-05", "2022-05-15")  # LUNA's crash: trades and stops


def test_a_replay_through_the_simulated_broker_reconciles_to_zero(tmp_path, shared_data,
                                                                   capsys):
    # history from 2022 only: the report backtests and charts all of it (minutes for 2021-2023)
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, data={
        "csv_path": str(shared_data), "symbols": SYMBOLS, "start": "2022-01-01",
        "end": "2022-07-01"})
    replay(cfg, engine, *WINDOW)
    rec = reconcile(cfg, engine, "replay")
    totals = rec.totals()
    assert len(rec.rows) > 200 and any(r.fills for r in rec.rows)
    assert abs(totals["unexplained"]) < 0.01  # nothing the causes do not account for
    # the simulated broker trades the environment's arithmetic: only rounding differs
    assert abs(rec.difference) < 0.05, rec.difference
    assert cli.main(["reconcile", "--name", "replay", "--config-dir", str(cfg.config_dir)]) == 0
    out = capsys.readouterr().out
    assert "live vs replay" in out and "unexplained" in out and "total" in out
    from cappuccino_core.operations.html_report import write_report
    page = write_report(cfg, engine, tmp_path / "report.html", trader="replay").read_text()
    assert "<h2>Live vs replay (replay)</h2>" in page
    total = page.split("class='reconcile-total'>")[1].split("<")[0]
    assert abs(float(total.replace(",", ""))) < 0.05


class WorseFills(SimBroker):
    """Fills one chosen order 1% worse than the market, as a thin book would."""
    worse: set[str] = set()

    def submit_market_order(self, symbol, side, qty, client_order_id):
        if client_order_id in self.worse and self.get_order(client_order_id) is None:
            price = self.prices[symbol]
            self.prices[symbol] = price * (1.01 if side == "buy" else 0.99)
            try:
                return super().submit_market_order(symbol, side, qty, client_order_id)
            finally:
                self.prices[symbol] = price
        return super().submit_market_order(symbol, side, qty, client_order_id)


def test_a_worse_fill_and_a_skipped_order_are_found_and_attributed(tmp_path, shared_data,
                                                                     monkeypatch):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    # a clean replay, to learn which orders the window sends
    replay(cfg, engine, *WINDOW, name="clean")
    rec = reconcile(cfg, engine, "clean")
    buys = [(r.bar, f) for r in rec.rows for f in r.fills
            if f["purpose"] == "rebalance" and f["side"] == "buy" and f["live_qty"] > 0]
    (bar_a, fill_a), (bar_b, fill_b) = buys[0], buys[len(buys) // 2]
    # plant: the first buy fills 1% worse; a later buy is refused by a minimum size
    WorseFills.worse = {client_order_id("planted", "rebalance", bar_a, fill_a["symbol"], "buy")}
    monkeypatch.setattr("cappuccino_core.trading.replay.SimBroker", WorseFills)

    def refuse_one(t, trader):  # for bar `bar_b` alone, the venue's minimum for its asset jumps
        broker, s = trader.broker, fill_b["symbol"]
        if trader.last_bar + HOUR == bar_b:
            def planted(symbols, refresh=False):
                rules = type(broker).asset_rules(broker, symbols, refresh)
                rules[s] = AssetRule(s, 1e12, rules[s].min_trade_increment)
                return rules
            broker.asset_rules = planted
        else:
            broker.__dict__.pop("asset_rules", None)
    replay(cfg, engine, *WINDOW, name="planted", on_bar=refuse_one)
    rec = reconcile(cfg, engine, "planted")
    totals = rec.totals()
    assert abs(totals["unexplained"]) < 0.01
    price = [x for x in rec.largest if x["cause"] == "fill price"]
    assert price and price[0]["bar"] == bar_a and price[0]["symbol"] == fill_a["symbol"]
    assert price[0]["amount"] == pytest.approx(-0.01 * fill_a["live_qty"] * fill_a["live_price"],
                                               rel=0.05)
    skipped = [x for x in rec.largest if x["cause"] == "skipped order"]
    assert skipped and skipped[0]["symbol"] == fill_b["symbol"]
    assert abs(totals["skipped order"]) > 1.0 and abs(totals["fill price"]) > 1.0
    # and the skipped order is in the journal as such
    from cappuccino_core.storage.database import orders
    import sqlalchemy as sa
    with engine.connect() as conn:
        status = conn.execute(sa.select(orders.c.status).where(
            orders.c.client_order_id == client_order_id("planted", "rebalance", bar_b,
                                                        fill_b["symbol"], "buy"))).scalar()
    assert status == "skipped"
