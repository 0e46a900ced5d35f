"""The ensemble: selection (selection.py), atomic publishing (publish.py), serving (serving.py).

`sync(cfg, engine)` is what the ensemble-sync service runs."""

from .publish import SyncResult, sync

__all__ = ["sync", "SyncResult"]
