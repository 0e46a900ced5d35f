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

USAGE = 2
RUNTIME = 1

# What a database driver raises when the server cannot be reached (or the URL is wrong).
DATABASE_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError)

URL_PASSWORD_RE = re.compile(r"(?P<head>://[^:/@]+:)(?P<pw>[^@]+)(?P<tail>@)")

# The storage URLs this process opened, last used last (storage.database registers them), so
# that a storage error names the database it is about.
urls_in_use: list[str] = []


def mask_text(text: str) -> str:
    """`text` with passwords in URLs replaced by '***'."""
    return URL_PASSWORD_RE.sub(r"\g<head>***\g<tail>", text)


class CappuccinoError(Exception):
    """The base of every error the product raises on purpose. The type says what it means to
    whoever reads the line: `exit_code` (USAGE: fix the input; RUNTIME: something failed) and
    `label`, the start of its one-line description."""

    exit_code = RUNTIME
    label = "error"
    whole_message = False  # True: the whole message (several listed problems), else its first line

    def describe(self) -> str:
        text = mask_text(str(self).strip()) if self.whole_message else first_line(self)
        return f"{self.label}: {text}"


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
    if isinstance(e, CappuccinoError):
        return e.exit_code, e.describe()
    if isinstance(e, DATABASE_DOWN):
        reason = first_line(e.orig or e)
        if WRONG_SETTING.search(reason):  # the URL names what is not there: fix the setting
            return USAGE, f"storage setting wrong ({_storage_in_use()}): {reason}"
        return RUNTIME, f"storage unreachable ({_storage_in_use()}): {reason}"
    if isinstance(e, sa.exc.SQLAlchemyError):
        return RUNTIME, (f"storage error ({_storage_in_use()}): {type(e).__name__}: "
                         f"{first_line(e)}")
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
    return ", ".join(mask_text(u) for u in urls_in_use[-1:]) or "storage.url"


def _is_broker_error(e: BaseException) -> bool:
    """An error of the Alpaca SDK or of the HTTP library under it (not ours: no common base)."""
    return (type(e).__module__ or "").startswith(("alpaca.", "requests."))
