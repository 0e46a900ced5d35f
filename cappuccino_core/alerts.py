"""Alerts and the daily summary, through Apprise (https://github.com/caronc/apprise): one URL per
channel in `alerts.urls` (Telegram `tgram://`, ntfy `ntfy://`, Pushover `pover://`, Slack,
Discord, email `mailto://`, a generic JSON webhook `json://` ...). A channel that fails is logged
and skipped; an alert never breaks the service that sends it. Texts are masked for secrets
before they leave, and a channel is logged by its scheme only (its URL holds a token).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from .config import Config, mask_text as _mask

log = logging.getLogger(__name__)
_TYPES = {"info": "info", "warning": "warning", "error": "failure", "critical": "failure",
          "success": "success"}


def _with_timeout(url: str, timeout_s: float) -> str:
    """Apprise's connect and read timeouts (`cto`, `rto`) unless the URL sets its own."""
    if "cto=" in url or "rto=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}cto={timeout_s:g}&rto={timeout_s:g}"


def send_alert(cfg: Config, title: str, message: str, severity: str = "warning") -> list[str]:
    """Send to every configured channel; returns the schemes of the channels that delivered."""
    import socket

    import apprise
    host = socket.gethostname()
    title, message = _mask(f"[cappuccino {host}] {title}"), _mask(message)
    if not cfg.alerts.urls:
        log.warning("alert (no channel configured): %s: %s", title, message)
        return []
    delivered = []
    for url in cfg.alerts.urls:
        scheme = urlsplit(url).scheme or "?"
        channel = apprise.Apprise()
        if not channel.add(_with_timeout(url, cfg.alerts.timeout_s)):
            log.error("alert channel %s: not a URL Apprise knows; skipped", scheme)
            continue
        try:
            ok = channel.notify(title=title, body=message,
                                notify_type=_TYPES.get(severity, "warning"))
        except Exception as e:  # noqa: BLE001 - a channel never breaks the sender
            ok = False
            log.error("alert channel %s failed: %s", scheme, _mask(str(e)))
        if ok:
            delivered.append(scheme)
        else:
            log.error("alert channel %s did not deliver", scheme)
    return delivered
