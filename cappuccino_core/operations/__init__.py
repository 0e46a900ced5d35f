"""Layer 8, operating the suite: status, monitor, metrics and the daily summary, the HTML
report, the auto-deployer, studies (import, delete), installing and the systemd units, the
dashboard, the demo.

May import: every layer below. Only the CLI (cappuccino_core/cli.py) and daemons/ sit above.
"""
