"""Layer 6, the ensemble: the manifest (manifest.py), selection (selection.py), atomic
publishing (publish.py), serving (serving.py), evaluation over a window (evaluation.py).
May import: common, storage, broker, data, rl, artifacts (not training: a sibling).

`sync_following(cfg, engine)` (a `sync` that follows a change of the active study made while
it ran) is what the ensemble-sync service runs."""

from .publish import SyncResult, sync, sync_following

__all__ = ["sync", "sync_following", "SyncResult"]
