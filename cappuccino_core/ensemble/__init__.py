"""The ensemble: selection (selection.py), atomic publishing (publish.py), serving (serving.py).

`sync_following(cfg, engine)` (a `sync` that follows a change of the active study made while
it ran) is what the ensemble-sync service runs."""

from .publish import SyncResult, sync, sync_following

__all__ = ["sync", "sync_following", "SyncResult"]
