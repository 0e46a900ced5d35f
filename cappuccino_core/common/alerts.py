"""Alerts and the daily summary, through Apprise (https://github.com/caronc/apprise): one URL per
channel in `alerts.urls` (Telegram `tgram://`, ntfy `ntfy://`, Pushover `pover://`, Slack,
Discord, email `mailto://`, a generic JSON webhook `json://` ...). A channel that fails is logged
and skipped; an alert never breaks the service that sends it. Texts are masked for secrets
before they leave, and a channel is logged by its scheme only (its URL holds a token).

Every alert has a severity (`info`, `warning`, `error`, `critical`) and a type (`KINDS`), and
names the host, the study and, where one is concerned, the trader. A channel may be routed by
tags, written as in Apprise's text configuration, `TAG[,TAG...]=URL`: it then receives only the
alerts whose severity or type is one of its tags (`critical,trader-degraded=tgram://...`); a
channel without tags receives everything.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import CONFIG_FILE, Config, ConfigError
from .config import mask_text as _mask

log = logging.getLogger(__name__)
SEVERITIES = ("info", "warning", "error", "critical")
# What an alert is about: a type a channel can be routed by.
KINDS = {
    "incident": "a monitor check found a problem (the key names which: trader-behind, ...)",
    "resolved": "a problem the monitor alerted is gone",
    "stop-exit": "a live trader's trailing stops sold positions",
    "trader-degraded": "a live trader's cycle keeps failing (orders refused, storage down...)",
    "trader-recovered": "a degraded trader works again",
    "unit-failed": "a systemd unit failed (its result, exit status and last journal lines)",
    "ensemble-version": "a new ensemble version was published",
    "promotion": "the auto-deployer promoted a model",
    "summary": "the daily summary",
}
_APPRISE_TYPES = {"info": "info", "warning": "warning", "error": "failure", "critical": "failure"}


@dataclass(frozen=True)
class Channel:
    url: str
    tags: frozenset[str]  # empty: every alert

    @classmethod
    def parse(cls, entry: str) -> "Channel":
        """`URL` or `TAG[,TAG...]=URL` (Apprise's text-configuration syntax)."""
        head, sep, rest = entry.partition("=")
        if sep and "://" not in head and "://" in rest:
            return cls(rest.strip(), frozenset(t.strip() for t in head.split(",") if t.strip()))
        return cls(entry.strip(), frozenset())

    def wants(self, severity: str, kind: str) -> bool:
        return not self.tags or bool(self.tags & {severity, kind})


def url_problems(cfg: Config) -> list[ConfigError]:
    """The alert channels Apprise cannot use (an unknown scheme, a URL missing its parts), each
    masked: an alert sent there would go nowhere."""
    import apprise
    return [ConfigError(CONFIG_FILE, f"alerts.urls[{i}]", _mask(Channel.parse(entry).url),
                        "a URL Apprise can send to (each service's form: "
                        "https://github.com/caronc/apprise/wiki)")
            for i, entry in enumerate(cfg.alerts.urls)
            if not apprise.Apprise().add(Channel.parse(entry).url)]


def _with_timeout(url: str, timeout_s: float) -> str:
    """Apprise's connect and read timeouts (`cto`, `rto`) unless the URL sets its own."""
    if "cto=" in url or "rto=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}cto={timeout_s:g}&rto={timeout_s:g}"


def compose(cfg: Config, title: str, message: str, severity: str, kind: str,
            trader: str | None = None, study: str | None = None) -> tuple[str, str]:
    """(title, body) as every channel receives them: severity and type in the title, and a
    first line naming host, study and trader."""
    host = socket.gethostname()
    study = study or cfg.active_study or "(none)"
    where = f"host {host} | study {study}" + (f" | trader {trader}" if trader else "")
    return (_mask(f"[cappuccino {host}] {severity.upper()} {kind}: {title}"),
            _mask(f"{where} | severity {severity} | type {kind}\n{message}"))


def send_alert(cfg: Config, title: str, message: str, severity: str = "warning",
               kind: str = "incident", trader: str | None = None,
               study: str | None = None) -> list[str]:
    """Send to every configured channel that wants it; returns the schemes that delivered."""
    import apprise
    if severity not in SEVERITIES or kind not in KINDS:
        raise ValueError(f"alert severity {severity!r} / type {kind!r}: not one of "
                         f"{SEVERITIES} / {sorted(KINDS)}")
    title, body = compose(cfg, title, message, severity, kind, trader, study)
    channels = [c for c in map(Channel.parse, cfg.alerts.urls) if c.wants(severity, kind)]
    if not channels:
        level = logging.INFO if severity == "info" else logging.WARNING
        log.log(level, "alert (no channel %s): %s: %s",
                "configured" if not cfg.alerts.urls else "routed to it", title, body)
        return []
    delivered = []
    for channel in channels:
        scheme = urlsplit(channel.url).scheme or "?"
        client = apprise.Apprise()
        if not client.add(_with_timeout(channel.url, cfg.alerts.timeout_s)):
            log.error("alert channel %s: not a URL Apprise knows; skipped", scheme)
            continue
        try:
            ok = client.notify(title=title, body=body, notify_type=_APPRISE_TYPES[severity])
        except Exception as e:  # noqa: BLE001 - a channel never breaks the sender
            ok = False
            log.error("alert channel %s failed: %s", scheme, _mask(str(e)))
        if ok:
            delivered.append(scheme)
        else:
            log.error("alert channel %s did not deliver", scheme)
    return delivered
