"""Trading: the loop (live.py, trader.py), orders (orders.py), the journal (journal.py) with its
readers (report.py, reconcile.py, replay.py)."""
