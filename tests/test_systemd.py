"""Fault tests under real systemd, in a throwaway container (see systemd_container.py).

One scenario, in order, as an operator lives it: install, train a study (a worker killed
mid-trial), start cappuccino.target, trade (the trader killed, then hung), switch the active
study, read the journal, stop everything. Real PostgreSQL, the built-in simulated broker, the
unit files exactly as shipped (only the drop-ins named below are added for the test).

The market runs on 1-minute bars, so the trader sees a new closed bar every minute: the bars are
a slice of the bundled real hourly sample, re-stamped onto a minute grid that reaches an hour
past now (a bar is only ever used once it has closed, so the future rows wait their turn).

Where nspawn cannot run (not root, package missing) the module skips with the reason; with
CAPPUCCINO_REQUIRE_SYSTEMD_TESTS=1 (set by .ci/run) it fails instead.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cappuccino_core.storage.database import make_engine, make_optuna_storage
from conftest import throwaway_database, trials, wait_for, webhook_receiver
from systemd_container import Container, why_not_available

SAMPLE = Path(__file__).resolve().parents[1] / "cappuccino_core" / "sample_data"
SYMBOLS = ["BTC/USD", "ETH/USD", "LTC/USD"]
MINUTE_BARS = 8000
TRADER = "cappuccino-paper-trader.service"
SYNC = "cappuccino-ensemble-sync.service"


def config(pg_url: str, hook_url: str, total_timesteps: int) -> str:
    return yaml.safe_dump({
        "storage": {"url": pg_url},
        "alerts": {"urls": [f"json://{hook_url.removeprefix('http://')}/generic"]},
        "data": {"csv_path": "/srv/cappuccino-test/bars", "symbols": SYMBOLS,
                 "timeframe": "1m", "closed_bar_delay_s": 1},
        "training": {"cv": "walk_forward", "cv_groups": 3, "cv_test_groups": 1,
                     "embargo_hours": 1, "heldout_days": 1, "pruner": "none",
                     "total_timesteps": total_timesteps, "n_envs": 16,
                     "heartbeat_interval_s": 1, "heartbeat_grace_s": 3},
        # trials this short never beat holding; these tests are about the processes, so any
        # trial joins (the default would publish the cash fallback: tests/test_ensemble.py)
        "ensemble": {"top_n": 3, "min_members": 2, "min_value": None, "near_constant": "admit"},
        "risk": {"intrabar_check_s": 5, "trailing_stop_pct": 0.10},  # stops these tests fire
    })


def minute_frame(symbol: str, end: pd.Timestamp) -> pd.DataFrame:
    """The bars `minute_bars` writes, as the Alpaca emulator serves them."""
    from io import StringIO
    df = pd.read_csv(StringIO(minute_bars(symbol, end)))
    df.index = pd.to_datetime(df.pop("date"), utc=True)
    return df[["open", "high", "low", "close", "volume"]]


def minute_bars(symbol: str, end: pd.Timestamp) -> str:
    base = symbol.split("/")[0]
    df = pd.read_csv(SAMPLE / f"{base}USDT_1h.csv.gz").tail(MINUTE_BARS).copy()
    df["date"] = pd.date_range(end=end, periods=len(df), freq="1min").strftime("%Y-%m-%d %H:%M:%S")
    return df.to_csv(index=False)


@pytest.fixture(scope="module")
def pg_url():
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="module")
def hook():
    """Where the alerts go: a webhook server on the host (the container shares its network)."""
    with webhook_receiver() as received_at:
        yield received_at


@pytest.fixture(scope="module")
def box(tmp_path_factory, pg_url, hook, installed_venv):
    reason = why_not_available()
    if reason:
        if os.environ.get("CAPPUCCINO_REQUIRE_SYSTEMD_TESTS") == "1":
            pytest.fail(f"systemd tests required here, but {reason}")
        pytest.skip(f"systemd fault tests need a container: {reason}")
    logs = tmp_path_factory.mktemp("systemd")
    c = Container(logs / "nspawn.log")
    try:
        c.boot()
        c.install(installed_venv)
        end = pd.Timestamp.now(tz="UTC").floor("min") + pd.Timedelta(minutes=60)
        for s in SYMBOLS:
            c.write(f"/srv/cappuccino-test/bars/{s.split('/')[0]}USDT_1m.csv", minute_bars(s, end))
        c.write("/etc/cappuccino/cappuccino.yaml", config(pg_url, hook[0], total_timesteps=1024))
        # test-only: a watchdog short enough to wait for, and a quick kill of a hung process
        c.write(f"/etc/systemd/system/{TRADER}.d/test-watchdog.conf",
                "[Service]\nWatchdogSec=15\nTimeoutAbortSec=5\n")
        c.systemctl("daemon-reload")
        yield c
    finally:
        if c.leader:  # kept for whoever reads a failure
            (logs / "journal.txt").write_text(c.run("journalctl", "--no-pager", check=False,
                                                    timeout=30).stdout)
        c.shutdown()


@pytest.fixture(scope="module")
def db(pg_url):
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def load(pg_url, name):
    return optuna.load_study(study_name=name, storage=make_optuna_storage(pg_url))


def seconds(span: str) -> float:
    """A systemd time span as `systemctl show` prints it ("15s", "1min 30s") in seconds."""
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|min|s|h)", span))


def message_of(entry: dict) -> str:
    """journalctl's JSON gives a message with unprintable bytes as a list of byte values."""
    m = entry.get("MESSAGE", "")
    return bytes(m).decode("utf-8", "replace") if isinstance(m, list) else m


def said(box, unit, text) -> bool:
    return any(text in e.get("MESSAGE", "") for e in box.journal(unit))


def main_pid(box, unit) -> int:
    return int(box.show(unit, "MainPID"))


def trader_state(db, key):
    with db.connect() as conn:
        return conn.execute(sa.text("SELECT value FROM cappuccino_trader_state "
                                    "WHERE trader = 'paper' AND key = :k"), {"k": key}).scalar()


def sent_orders(db) -> list[tuple]:
    """(client order id, bar, symbol, side) of every order the simulated broker received."""
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT s.client_order_id, o.bar_time, o.symbol, o.side FROM cappuccino_sim_orders s "
            "JOIN cappuccino_orders o USING (client_order_id) ORDER BY s.ts"))]


def switch_study(box, name: str) -> None:
    """Write active_study.yaml while no sync runs. A write that lands in the last moments of a
    running sync (the timer's, say), after its final re-read, is merged by systemd into that
    run and waits for the next timer tick (README, Operations: a known window of milliseconds);
    these tests are about the switch itself, so they stay out of that window."""
    wait_for(lambda: box.show(SYNC, "ActiveState") != "activating", 240, "a running sync to end")
    box.write("/etc/cappuccino/active_study.yaml", f"study: {name}\n")


# --- the scenario ------------------------------------------------------------------------


def test_timers_are_registered_with_their_schedule(box):
    box.systemctl("start", "cappuccino-ensemble-sync.timer", "cappuccino-auto-deployer.timer",
                  "cappuccino-monitor.timer")
    listed = box.systemctl("list-timers", "--all", "--no-pager")
    for timer in ("ensemble-sync", "auto-deployer", "monitor"):
        assert f"cappuccino-{timer}.timer" in listed
    assert "OnUnitActiveUSec=10min" in box.show("cappuccino-ensemble-sync.timer",
                                                   "TimersMonotonic")
    assert "OnUnitActiveUSec=5min" in box.show("cappuccino-monitor.timer", "TimersMonotonic")
    assert "*-*-* *:00:00" in box.show("cappuccino-auto-deployer.timer", "TimersCalendar")
    assert box.show("cappuccino-active-study.path", "Unit") == SYNC
    # the vendor units where local packages put theirs, the operator's drop-ins in /etc
    assert box.show(TRADER, "FragmentPath") == f"/usr/local/lib/systemd/system/{TRADER}"
    assert f"/etc/systemd/system/{TRADER}.d/test-watchdog.conf" in box.show(TRADER, "DropInPaths")
    assert "cappuccino 0." in box.run("cappuccino", "--version").stdout  # on the PATH
    # stopped again until cappuccino.target starts them: the sync's first run (OnBootSec=2min)
    # must not publish while the next test trains (one finished trial is the fallback, and
    # the trader test starts from no ensemble)
    box.systemctl("stop", "cappuccino-ensemble-sync.timer", "cappuccino-auto-deployer.timer",
                  "cappuccino-monitor.timer")


def test_trainer_killed_mid_trial_fails_and_is_retried(box, pg_url, hook):
    slow = config(pg_url, hook[0], total_timesteps=50_000_000)  # still running when killed
    box.write("/etc/cappuccino/cappuccino.yaml", slow)
    box.cli("train", "start", "--study", "alpha", "--workers", "1", "--n-trials", "3",
            "--activate")
    unit = "cappuccino-train@alpha:0.service"
    assert box.show(unit, "ActiveState") == "active"
    study = load(pg_url, "alpha")
    # the seed is recorded once every parameter is drawn: the retry must reuse them all
    wait_for(lambda: any("seed" in t.user_attrs for t in trials(study, TrialState.RUNNING)),
             120, "a running trial")
    box.write("/etc/cappuccino/cappuccino.yaml", config(pg_url, hook[0], total_timesteps=1024))
    box.run("kill", "-9", str(main_pid(box, unit)))  # from outside systemd, no clean-up
    (killed,) = trials(study, TrialState.RUNNING)
    # systemd restarts the worker (RestartSec=15); it finds the trial stale and retries it
    wait_for(lambda: said(box, unit, "restart counter is at 1"), 60, "systemd's restart")
    # done at the target: it exits 0 (systemd forgets NRestarts once the unit is inactive)
    wait_for(lambda: box.show(unit, "ActiveState") == "inactive", 240, "the worker to finish")
    assert box.show(unit, "Result") == "success"
    study = load(pg_url, "alpha")
    assert not trials(study, TrialState.RUNNING)
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials(study, TrialState.COMPLETE)
               if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert len(trials(study, TrialState.COMPLETE)) >= 2
    # a second study, for the switch below, trains while the trader runs
    box.cli("train", "start", "--study", "beta", "--workers", "1", "--n-trials", "2")


def test_trader_trades_and_a_kill_9_neither_repeats_orders_nor_forgets_peaks(box, db):
    # the trader first, with no ensemble yet (the timers' first sync is due at once: OnBootSec
    # passed while the container trained), then everything else
    box.systemctl("start", TRADER)
    wait_for(lambda: said(box, TRADER, "no ensemble yet"), 60, "the trader without an ensemble")
    box.systemctl("start", "cappuccino.target")
    box.systemctl("start", SYNC)  # the first ensemble, from alpha
    first_pid = wait_for(lambda: main_pid(box, TRADER), 60, "the trader")
    wait_for(lambda: (trader_state(db, "decision") or {}).get("ensemble") == 1
             and trader_state(db, "stops"), 150, "a bar traded with ensemble v1")
    orders_before = sent_orders(db)
    peaks_before = {s: v["peak"] for s, v in trader_state(db, "stops").items()}
    assert orders_before and peaks_before
    box.run("kill", "-9", str(first_pid))
    # Restart=always, RestartSec=5; READY=1 comes after reconciling with the broker
    wait_for(lambda: main_pid(box, TRADER) not in (0, first_pid)
             and box.show(TRADER, "ActiveState") == "active", 60, "the restarted trader")
    assert box.show(TRADER, "NRestarts") == "1"
    peaks_after = {s: v["peak"] for s, v in trader_state(db, "stops").items()}
    for s, peak in peaks_before.items():
        if s in peaks_after:  # still held: the peak since entry survived the crash
            assert peaks_after[s] >= peak
    # the next bar is traded once, by the new process; no order is ever sent twice
    last = trader_state(db, "last_bar")
    wait_for(lambda: trader_state(db, "last_bar") != last, 90, "the next bar")
    orders = sent_orders(db)
    assert orders[:len(orders_before)] == orders_before
    keys = [(bar, sym, side) for _, bar, sym, side in orders]
    assert len(keys) == len(set(keys)), "an order was sent twice for one bar"


def test_a_hung_trader_is_restarted_by_the_watchdog(box):
    """A loop that stops pinging (SIGSTOP freezes it, as a hang in I/O would) is killed by the
    watchdog and restarted; nothing in the product knows about the test."""
    watchdog_s = seconds(box.show(TRADER, "WatchdogUSec"))
    abort_s = seconds(box.show(TRADER, "TimeoutAbortUSec"))
    restart_s = seconds(box.show(TRADER, "RestartUSec"))
    pid = main_pid(box, TRADER)
    restarts = int(box.show(TRADER, "NRestarts"))
    box.run("kill", "-STOP", str(pid))
    hung_at = time.monotonic()
    wait_for(lambda: said(box, TRADER, "Watchdog timeout"), 60, "the watchdog")
    wait_for(lambda: main_pid(box, TRADER) not in (0, pid)
             and box.show(TRADER, "ActiveState") == "active", 60, "the restart")
    took = time.monotonic() - hung_at
    intrabar = 5  # the loop's last ping can come up to one cycle before the freeze
    assert int(box.show(TRADER, "NRestarts")) == restarts + 1
    # + start-up of the new process
    assert took <= watchdog_s + abort_s + restart_s + intrabar + 10, took


def test_switching_the_active_study_syncs_and_the_trader_follows(box, pg_url, db):
    wait_for(lambda: box.show("cappuccino-train@beta:0.service", "ActiveState") == "inactive",
             240, "beta's training")
    assert len(trials(load(pg_url, "beta"), TrialState.COMPLETE)) >= 2
    switch_study(box, "beta")
    # the sync may take a while on a slow machine whose cores the trainers share (seen: 60 s)

    def published():
        with db.connect() as conn:
            return conn.execute(sa.text("SELECT version FROM cappuccino_ensemble_versions "
                                        "WHERE study = 'beta'")).scalar()
    version = wait_for(published, 240, "a new version from beta")
    wait_for(lambda: (trader_state(db, "decision") or {}).get("ensemble") == version, 150,
             f"a bar traded with ensemble v{version}")
    reloads = [e["MESSAGE"] for e in box.journal(TRADER) if "(study beta" in e.get("MESSAGE", "")]
    assert reloads, "the trader should say it reloaded beta's ensemble"


def test_a_failed_sync_alerts_and_the_trader_keeps_its_ensemble(box, db, hook):
    _, received = hook
    before = (trader_state(db, "decision") or {}).get("ensemble")
    switch_study(box, "no-such-study")
    # the sync fails (unknown study); OnFailure= starts cappuccino-alert@<the sync unit>
    failed = lambda: [b for _, b in received  # noqa: E731
                      if f"unit-failed: {SYNC}" in b.get("title", "")]
    wait_for(failed, 60, "the alert for the failed sync")
    assert box.show(SYNC, "Result") == "exit-code"
    # what failed and how, and the failed run's own last journal lines
    alert = failed()[-1]
    assert "ERROR unit-failed" in alert["title"] and "result exit-code" in alert["title"]
    assert "last journal lines:" in alert["message"] and "no-such-study" in alert["message"]
    assert box.show(TRADER, "ActiveState") == "active"
    with db.connect() as conn:
        assert not conn.execute(sa.text("SELECT 1 FROM cappuccino_ensemble_versions "
                                        "WHERE study = 'no-such-study'")).first()
    switch_study(box, "beta")
    last = trader_state(db, "last_bar")
    wait_for(lambda: trader_state(db, "last_bar") != last, 90, "the next bar")
    assert trader_state(db, "decision")["ensemble"] == before


def test_the_journal_has_each_services_logs_with_priorities(box):
    for unit in (TRADER, SYNC, "cappuccino-train@alpha:0.service"):
        # our processes' lines (systemd's own about the unit are there too, and don't count)
        priorities = {e.get("PRIORITY") for e in box.journal(unit)
                      if e.get("SYSLOG_IDENTIFIER") == "cappuccino"}
        assert "6" in priorities, (unit, priorities)
    # the trader's warnings are warnings: `journalctl -p warning` finds them
    warned = box.run("journalctl", "-u", TRADER, "-p", "warning", "--no-pager").stdout
    assert "no ensemble yet" in warned
    # one entry per message, however many lines (journald's native protocol), its priority kept
    box.run("systemd-run", "--wait", "--unit=cappuccino-journal-probe", box.python, "-c",
            "import logging; from cappuccino_core.common.service import setup_logging; setup_logging(); "
            "logging.getLogger('probe').warning('first line\\nsecond line')")
    probe = [e for e in box.journal("cappuccino-journal-probe.service")  # (systemd's own
             if "first line" in message_of(e) and e.get("_COMM") != "systemd"]  # lines quote it)
    assert len(probe) == 1 and message_of(probe[0]) == "probe: first line\nsecond line"
    assert probe[0]["PRIORITY"] == "4" and probe[0]["SYSLOG_IDENTIFIER"] == "cappuccino"
    # the hardening leaves torch what it needs to pick its fast kernels
    assert not said(box, "cappuccino-train@alpha:0.service", "Error in cpuinfo")


def test_stopping_the_target_stops_everything_in_time(box, pg_url):
    box.cli("train", "start", "--study", "alpha", "--workers", "1", "--n-trials", "50")
    unit = "cappuccino-train@alpha:0.service"
    study = load(pg_url, "alpha")
    wait_for(lambda: trials(study, TrialState.RUNNING), 120, "a running trial")
    started = time.monotonic()
    box.systemctl("stop", "cappuccino.target")  # PartOf= carries the stop to every unit
    units = (TRADER, unit, "cappuccino-ensemble-sync.timer", "cappuccino-monitor.timer",
             "cappuccino-auto-deployer.timer", "cappuccino-active-study.path")
    limit = max(seconds(box.show(u, "TimeoutStopUSec")) for u in (TRADER, unit))
    wait_for(lambda: all(box.show(u, "ActiveState") == "inactive" for u in units), limit + 10,
             "every unit to stop")
    took = time.monotonic() - started
    assert took < limit, f"stopping took {took:.0f} s, more than the stop timeout {limit:.0f} s"
    assert not trials(load(pg_url, "alpha"), TrialState.RUNNING)
    # nothing was killed: both stopped on SIGTERM
    assert box.show(TRADER, "Result") == "success" and box.show(unit, "Result") == "success"


# --- resilience: a database outage, a broken version ---------------------------------------------

@pytest.fixture(scope="module")
def outage_db():
    """A PostgreSQL server of this test's own, which it stops for a minute."""
    from private_postgres import PrivatePostgres
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture(scope="module")
def alpaca():
    """Alpaca's endpoints, emulated on the host (the container shares its network): a broker
    that needs no database, as the real one."""
    from alpaca_emulator import AlpacaEmulator, RunningEmulator
    end = pd.Timestamp.now(tz="UTC").floor("min") + pd.Timedelta(minutes=60)
    bars = {s: minute_frame(s, end) for s in SYMBOLS}
    with RunningEmulator(AlpacaEmulator(bars=bars, timeframe="1Min")) as running:
        yield running


def journal_lines(box, unit, text) -> list[str]:
    return [e["MESSAGE"] for e in box.journal(unit) if text in e.get("MESSAGE", "")]


def test_a_database_outage_never_restarts_the_trader_and_its_stops_still_fire(
        box, hook, outage_db, alpaca):
    emu = alpaca.emulator
    for s in SYMBOLS:  # the latest trades: the minute bars' last closes
        base = s.split("/")[0]
        emu.prices[s] = float(pd.read_csv(SAMPLE / f"{base}USDT_1h.csv.gz")["close"].iloc[-1])
    cfg = yaml.safe_load(config(outage_db.url, hook[0], total_timesteps=1024))
    # a live account trades live bars: the emulator serves the same minute bars
    cfg["broker"] = {"kind": "alpaca", "url_override": alpaca.url}
    cfg["data"] = {**cfg["data"], "source": "alpaca"}
    cfg["data"].pop("csv_path")
    box.write("/etc/cappuccino/cappuccino.yaml", yaml.safe_dump(cfg))
    box.write("/etc/cappuccino/credentials/key_id", "test-key")  # LoadCredential=alpaca:...
    box.write("/etc/cappuccino/credentials/secret_key", "test-secret")
    box.systemctl("start", TRADER)
    pid = main_pid(box, TRADER)
    wait_for(lambda: emu.positions, 120, "the trader holding positions at the broker")
    # orders fill asynchronously: the bar is done when every order it sent is, and no more
    # come (the next bar's are a minute away)
    wait_for(lambda: settled(emu), 30, "the bar's orders to be final")
    held = {box_symbol(p): float(v["qty"]) for p, v in emu.positions.items()}
    intrabar = cfg["risk"]["intrabar_check_s"]

    outage_db.stop()
    down_at = time.monotonic()
    try:
        wait_for(lambda: journal_lines(box, TRADER, "live: degraded:"), 90,
                 "the trader to notice the outage")
        emu.prices.update({s: p * 0.85 for s, p in emu.prices.items()})  # through every stop
        dropped_at = time.monotonic()

        def exits():
            return {o["symbol"]: float(o["qty"]) for o in emu.posted_orders()
                    if "-stop-" in o["client_order_id"]}
        wait_for(lambda: exits().keys() >= held.keys(), 60, "the stop exits, without a database")
        took = time.monotonic() - dropped_at
        assert exits() == pytest.approx(held)  # every position, whole
        assert took <= intrabar + 5, f"the stop exit took {took:.1f} s"
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))  # a minute without PostgreSQL
    finally:
        outage_db.start()
    wait_for(lambda: journal_lines(box, TRADER, "live: recovered after"), 90, "the recovery")
    assert main_pid(box, TRADER) == pid and box.show(TRADER, "NRestarts") == "0"
    assert len(journal_lines(box, TRADER, "live: degraded:")) == 1
    assert len(journal_lines(box, TRADER, "live: recovered after")) == 1
    engine = make_engine(outage_db.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT symbol, status, filled_qty FROM cappuccino_orders WHERE reason = 'stop'")).all()
    finally:
        engine.dispose()
    assert {r.symbol: r.filled_qty for r in rows} == pytest.approx(held)
    assert {r.status for r in rows} == {"filled"}


def settled(emu, quiet_s: float = 3.0) -> bool:
    """Every order at the emulator final, and none sent for `quiet_s` seconds."""
    before = len(emu.orders)
    time.sleep(quiet_s)
    return len(emu.orders) == before and all(
        o["status"] in ("filled", "canceled", "rejected", "expired") for o in emu.orders.values())


def box_symbol(plain: str) -> str:
    return next(s for s in SYMBOLS if s.replace("/", "") == plain)


def test_a_restarted_trader_serves_the_newest_version_that_loads(box):
    current = os.readlink(box.path("/var/lib/cappuccino/ensembles/current"))
    version = int(current.lstrip("v"))
    members = sorted(box.path(f"/var/lib/cappuccino/ensembles/{current}/members").iterdir())
    model = members[0] / "model.pt"
    model.write_bytes(model.read_bytes()[:64])  # a member truncated on disk
    box.systemctl("restart", TRADER)
    said_skip = wait_for(lambda: journal_lines(box, TRADER, f"ensemble {current} does not load"),
                         60, "the trader to skip the broken version")
    assert said_skip
    (serving,) = journal_lines(box, TRADER, "the newest version that loads")[-1:]
    served = int(re.search(r"serving ensemble v(\d+)", serving)[1])
    assert served < version
    assert box.show(TRADER, "ActiveState") == "active"
    box.systemctl("stop", TRADER)


def test_uninstall_disables_then_removes_and_leaves_no_dangling_links(box):
    box.systemctl("enable", "cappuccino.target", "cappuccino-ensemble-sync.timer")
    wants = box.path("/etc/systemd/system")
    assert list(wants.glob("*.wants/cappuccino*"))  # enabled: links in .wants directories
    python = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python")
    box.run(python, "-m", "cappuccino_core.cli", "install", "--prefix", "/opt/cappuccino",
            "--uninstall")
    assert not list(wants.glob("*.wants/cappuccino*"))  # disabled before the files went
    assert not list(box.path("/usr/local/lib/systemd/system").glob("cappuccino*"))
    assert box.show(TRADER, "LoadState") == "not-found"
    assert box.path("/etc/cappuccino/cappuccino.yaml").exists()  # configuration stays
    assert box.path(f"/etc/systemd/system/{TRADER}.d/test-watchdog.conf").exists()  # drop-ins
