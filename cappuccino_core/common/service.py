"""What every daemon shares with systemd: journald logging and sd_notify.

Logging follows the rule systemd documents for `$JOURNAL_STREAM` (systemd.exec(5)): a process
is talking to the journal only when the device and inode of its stderr are the ones that
variable names; a child that merely inherited the variable (a shell, a pipe to a file) writes
plain lines. When it is the journal, each log record is sent as ONE entry over journald's native
protocol (systemd-journald.service(8), "Native Journal Protocol"), so a multi-line message or a
traceback stays one entry with its priority, instead of one entry per line.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
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


JOURNAL_SOCKET = "/run/systemd/journal/socket"


def stderr_is_the_journal() -> bool:
    """$JOURNAL_STREAM ("device:inode") names the stream systemd connected to the journal;
    stderr is that stream only if its own device and inode match."""
    try:
        device, inode = (int(x) for x in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def journal_datagram(fields: dict[str, str]) -> bytes:
    """Fields in the native protocol: KEY=value lines; a value holding a newline is sent as
    KEY, a newline, its length as 64-bit little endian, the bytes, and a newline."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """One journal entry per log record, whatever its lines, with its syslog priority."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "cappuccino"):
        super().__init__()
        self.path, self.identifier = path, identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(JournalFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        fields = {"MESSAGE": text, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                  "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name,
                  "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno),
                  "CODE_FUNC": record.funcName}
        try:
            self.sock.sendto(journal_datagram(fields), self.path)
        except OSError:  # too large for a datagram, or journald away: the stream still works
            self.fallback.emit(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


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


def wait_for_storage(action, notifier: "Notifier", limit_s: float = 540.0):
    """At start-up, retry `action` while the storage is unreachable (a database still booting,
    an outage): said once in the journal and in STATUS, retried with backoff, and given up
    (the error raised, for systemd's restart) only after `limit_s`, well inside the units'
    TimeoutStartSec. A restart could not fix an outage sooner; burning the start limit on it
    would only fail the unit."""
    import time

    from .errors import DATABASE_DOWN, first_line
    delay, deadline, said = 2.0, time.monotonic() + limit_s, False
    while True:
        try:
            return action()
        except DATABASE_DOWN as e:
            if time.monotonic() + delay > deadline:
                raise
            if not said:
                logging.getLogger("cappuccino").error("waiting for the storage: %s",
                                                      first_line(e.orig or e))
                said = True
            notifier.status(f"waiting for the storage: {first_line(e.orig or e)}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


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
    """The journal's native protocol when stderr is the journal (see the module's docstring),
    readable lines otherwise."""
    handler: logging.Handler
    if stderr_is_the_journal() and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler()
    elif stderr_is_the_journal():  # no socket to speak to: `<N>` prefixes on the stream
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
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
