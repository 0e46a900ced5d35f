"""Layer 7, trading: the loop (live.py, trader.py), orders (orders.py), the journal
(journal.py, its tables' only writer and reader) and what reads it for a trader: views
(trader_views.py), reconciliation (reconcile.py), replay (replay.py).

May import: every layer below (common .. ensemble), not operations.
"""
