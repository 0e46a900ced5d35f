"""cappuccino-paper-trader.service: the paper trader.

Broker: `broker.kind: sim` (the built-in simulated broker, the default) or `alpaca` (Alpaca's
paper account; keys from systemd credentials or the environment, never logged).
READY=1 after reconciliation with the broker; WATCHDOG=1 and STATUS= from the loop itself;
SIGHUP reloads the ensemble between bars (RELOADING=1 / READY=1); SIGTERM stops after the
current cycle.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from cappuccino_core.common.service import (
    Notifier,
    run_daemon,
    start_daemon,
    wait_for_storage,
)
from cappuccino_core.common.threads import set_torch_threads
from cappuccino_core.storage.database import app_engine
from cappuccino_core.trading.live import LiveLoop

log = logging.getLogger("cappuccino.trader")


def make_broker(cfg, engine, name: str):
    if cfg.broker.kind == "alpaca":
        from cappuccino_core.broker.alpaca import AlpacaBroker
        return AlpacaBroker.from_config(cfg)
    from cappuccino_core.broker.sim import SimBroker
    return SimBroker.from_config(cfg, engine, account=name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="paper", help="trader name in the database")
    args, cfg = start_daemon(parser, argv)
    set_torch_threads(1, "paper trader")  # small models: one core, never a worker's
    notifier = Notifier()

    def start() -> LiveLoop:
        engine = app_engine(cfg)
        loop = LiveLoop(cfg, make_broker(cfg, engine, args.name), engine, notifier,
                        name=args.name)
        loop.start()
        return loop
    loop = wait_for_storage(start, notifier)  # a database still booting is no crash
    signal.signal(signal.SIGHUP, lambda *_: loop.request_reload())
    signal.signal(signal.SIGTERM, lambda *_: loop.request_stop())
    signal.signal(signal.SIGINT, lambda *_: loop.request_stop())
    loop.run()
    log.info("trader stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run_daemon(main))
