"""Sending one alert through every configured channel: a generic JSON webhook, Discord- and
Slack-compatible webhooks, and local sendmail. A channel that fails is logged and skipped; an
alert never breaks the service that sends it. Texts are masked for secrets before sending."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import urllib.error
import urllib.request

from .config import Config, mask_text as _mask

log = logging.getLogger(__name__)


def _post(url: str, payload: dict, timeout: float) -> None:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


def send_alert(cfg: Config, title: str, message: str, severity: str = "warning") -> list[str]:
    """Returns the channels that delivered."""
    a = cfg.alerts
    host = socket.gethostname()
    title, message = _mask(f"[cappuccino {host}] {title}"), _mask(message)
    channels = []
    if a.webhook_url:
        channels.append(("webhook", lambda: _post(a.webhook_url, {
            "title": title, "message": message, "severity": severity, "host": host},
            a.timeout_s)))
    if a.discord_webhook_url:
        channels.append(("discord", lambda: _post(a.discord_webhook_url, {
            "content": f"**{title}**\n{message}"[:1900]}, a.timeout_s)))
    if a.slack_webhook_url:
        channels.append(("slack", lambda: _post(a.slack_webhook_url, {
            "text": f"*{title}*\n{message}"}, a.timeout_s)))
    if a.email_to:
        def mail():
            body = f"To: {a.email_to}\nSubject: {title}\n\n{message}\n"
            subprocess.run([a.sendmail_path, "-t"], input=body, text=True, check=True,
                           timeout=a.timeout_s)
        channels.append(("email", mail))
    delivered = []
    for name, send in channels:
        try:
            send()
            delivered.append(name)
        except (OSError, urllib.error.URLError, subprocess.SubprocessError, ValueError) as e:
            log.error("alert channel %s failed: %s", name, _mask(str(e)))
    if not channels:
        log.warning("alert (no channel configured): %s: %s", title, message)
    return delivered
