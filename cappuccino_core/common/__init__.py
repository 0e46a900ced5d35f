"""Layer 0, what every part uses: the validated configuration (config.py), the one exception
base and exit codes (errors.py), durable file writes (files.py), integer ranges (intervals.py),
torch thread counts (threads.py), daemon plumbing for systemd (service.py) and alert channels
(alerts.py).

May import: nothing else in the package.
"""
