"""What every daemon shares with systemd: journald-friendly logging and sd_notify."""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities, so `journalctl -p warning` works on our stdout/stderr lines.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Prefixes each line with `<N>` (journald reads it as the priority); no timestamp,
    since journald adds its own."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def start_daemon(parser, argv=None):
    """The start of every daemon: its arguments (plus --config-dir), journald logging, and
    the validated configuration. A bad configuration is logged and the process exits 2."""
    from .config import ConfigError, load_config
    parser.add_argument("--config-dir", help="default: $CAPPUCCINO_CONFIG_DIR or /etc/cappuccino")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return args, load_config(args.config_dir)
    except ConfigError as e:
        logging.getLogger("cappuccino").error("configuration error: %s", e)
        raise SystemExit(2) from e


def run_daemon(main, argv=None) -> int:
    """Run a daemon's `main`: whatever ends it is logged as one line naming the cause (the
    traceback only at debug level, or with CAPPUCCINO_DEBUG=1), and the exit code says what
    kind of failure it was (2 bad configuration, 1 runtime), for systemd and the operator."""
    from .errors import describe
    try:
        return main(argv)
    except Exception as e:  # noqa: BLE001 - every failure ends as one line (see errors.py)
        code, line = describe(e)
        logging.getLogger("cappuccino").error(
            "%s", line, exc_info=os.environ.get("CAPPUCCINO_DEBUG") == "1")
        return code


def setup_logging(level: int = logging.INFO) -> None:
    """Journald format when run by systemd (JOURNAL_STREAM is set), readable lines on a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Notifier:
    """sd_notify for a Type=notify service; does nothing outside systemd (no NOTIFY_SOCKET).

    Call `watchdog()` from the main loop itself, never from a side thread, so that a hung loop
    stops the pings and systemd restarts the service."""

    def __init__(self):
        self._socket = os.environ.get("NOTIFY_SOCKET")
        self._notifier = None
        if self._socket:
            import sdnotify
            self._notifier = sdnotify.SystemdNotifier()

    @property
    def active(self) -> bool:
        return self._notifier is not None

    def _send(self, message: str) -> None:
        if self._notifier:
            self._notifier.notify(message)

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
