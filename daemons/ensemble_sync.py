"""cappuccino-ensemble-sync.service: one sync of the ensemble with the active study.

Run by its timer every 10 minutes and by cappuccino-active-study.path as soon as
active_study.yaml changes. Exit 0 when published, unchanged, or too few members yet (the
current ensemble keeps trading); exit 1 when the study is unknown or has no eligible trial.
"""

import sys

from cappuccino_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["ensemble", "sync", *sys.argv[1:]]))
