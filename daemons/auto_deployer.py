"""cappuccino-auto-deployer.service (hourly timer): validate the active study's best trial
out of sample, record the decision, and promote it (a new ensemble version, the trader
reloads) only if it passes every gate. See cappuccino_core/deploy.py."""

import sys

from cappuccino_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["deploy", *sys.argv[1:]]))
