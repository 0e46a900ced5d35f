"""One line for every error a command or a daemon can end on, and its exit code.

2 for bad configuration or arguments (fix the input), 1 for runtime failures (storage down,
bad data, a model that will not load, the broker refusing). The traceback is for `--debug`
(or `CAPPUCCINO_DEBUG=1` for a daemon), never the default: an operator reads the cause.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading

import sqlalchemy as sa

from .config import ConfigError, mask_text
from .optuna_db import OptunaSchemaError
from .storage import ForeignDatabase, StorageEmpty
from .window import WindowError

USAGE = 2
RUNTIME = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM: the same clean stop as Ctrl-C (every `finally` and clean-up runs), exit 143
    (128 + 15) instead of 130."""


@contextlib.contextmanager
def stop_on_sigterm():
    """Within it, SIGTERM raises Terminated in the main thread (elsewhere: left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return mask_text(text.splitlines()[0][:500]) if text else type(e).__name__


def describe(e: BaseException) -> tuple[int, str]:
    """(exit code, one line naming the cause) for an exception that ends a command."""
    from .artifacts import ArtifactError
    from .data.bars import DataError
    if isinstance(e, ConfigError):
        return USAGE, f"configuration error: {e}"
    if isinstance(e, WindowError):
        return USAGE, f"window error: {e}"
    if isinstance(e, OptunaSchemaError | ForeignDatabase):
        return USAGE, f"storage error: {e}"
    if isinstance(e, StorageEmpty):
        return RUNTIME, f"storage: {e}"
    if isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError):
        reason = first_line(e.orig or e)
        if WRONG_SETTING.search(reason):  # the URL names what is not there: fix the setting
            return USAGE, f"storage setting wrong ({_storage_in_use()}): {reason}"
        return RUNTIME, f"storage unreachable ({_storage_in_use()}): {reason}"
    if isinstance(e, sa.exc.SQLAlchemyError):
        return RUNTIME, (f"storage error ({_storage_in_use()}): {type(e).__name__}: "
                         f"{first_line(e)}")
    if isinstance(e, DataError):
        return RUNTIME, f"data error: {first_line(e)}"
    if type(e).__name__ == "ReconcileError":
        return RUNTIME, f"reconcile: {first_line(e)}"
    if isinstance(e, ArtifactError):
        return RUNTIME, f"model artifact refused: {first_line(e)}"
    if _is_broker_error(e):
        return RUNTIME, f"broker error: {first_line(e)}"
    if isinstance(e, OSError):
        return RUNTIME, f"{type(e).__name__}: {first_line(e)}"
    return RUNTIME, f"error: {type(e).__name__}: {first_line(e)}"


# What a database answers when the URL is wrong rather than the server down.
WRONG_SETTING = re.compile(r"invalid port|does not exist|password authentication failed|"
                           r"no password supplied|could not translate host name|invalid dsn|"
                           r"invalid connection option|unable to open database file", re.I)


def _storage_in_use() -> str:
    from .storage import urls_in_use
    return ", ".join(mask_text(u) for u in urls_in_use[-1:]) or "storage.url"


def _is_broker_error(e: BaseException) -> bool:
    module = type(e).__module__ or ""
    return module.startswith(("alpaca.", "requests.")) or type(e).__name__ == "BrokerUnavailable"
