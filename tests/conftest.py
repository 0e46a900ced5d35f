"""Shared fixtures: a throwaway PostgreSQL database, config directories, the real data set."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The real hourly data beside the checkout (../shared), or where CAPPUCCINO_SHARED_DATA says.
SHARED_DATA = Path(os.environ.get("CAPPUCCINO_SHARED_DATA",
                                  REPO.parent / "shared" / "data" / "binance_spot_1h"))
# A role allowed to create databases; .ci/run creates `cappuccino` with CREATEDB.
PG_ADMIN_URL = os.environ.get("CAPPUCCINO_TEST_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real market data not found at {SHARED_DATA} (set CAPPUCCINO_SHARED_DATA)")
    return SHARED_DATA


@contextmanager
def throwaway_database():
    """A fresh PostgreSQL database, dropped afterwards; yields its URL."""
    name = f"cappuccino_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """Each test using it runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cappuccino.db'}"
    return request.getfixturevalue("pg_url")


def write_config(directory: Path, config: dict, active_study: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cappuccino.yaml").write_text(yaml.safe_dump(config))
    if active_study:
        (directory / "active_study.yaml").write_text(yaml.safe_dump({"study": active_study}))
    return directory


@pytest.fixture
def config_dir(tmp_path) -> Path:
    """A config dir whose state dir is inside the test's tmp_path."""
    return write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")}})


@contextmanager
def webhook_receiver():
    """A local HTTP server that keeps every POST; yields (its URL, [(path, body), ...]): the
    body parsed when it is JSON, else {"raw": text, "headers": {...}} (ntfy posts plain text)."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"raw": body.decode("utf-8", "replace"), "headers": dict(self.headers)}
            received.append((self.path, parsed))
            # 200 with a JSON body, as webhook receivers and an ntfy server answer
            # (https://docs.ntfy.sh/publish/: the published message comes back as JSON)
            answer = json.dumps({"id": str(len(received)), "event": "message"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    """Poll until `predicate()` is truthy and return its value; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def trials(study, *states):
    """A study's trials (in the given states), read fresh from its storage."""
    return study.get_trials(deepcopy=False, states=states or None)


# The suite as `cappuccino install` installs it: the prefix's virtualenv, built once per test
# session from the lock (hashes checked) with the package not editable, outside the checkout's
# import path. Under the checkout's build/ (ignored by git) so that the systemd container, which
# binds the checkout, can reach it; rebuilt every session, so it is always today's code.
INSTALLED_STAGE = REPO / "build" / "test-install"


@pytest.fixture(scope="session")
def installed_venv() -> Path:
    import shutil

    from cappuccino_core.operations.install import install
    shutil.rmtree(INSTALLED_STAGE, ignore_errors=True)
    install("/opt/cappuccino", str(INSTALLED_STAGE), venv=True, user=False,
            systemd_reload=False, log=lambda _: None)
    return INSTALLED_STAGE / "opt" / "cappuccino" / "venv"
