"""The ensemble: selection (selection.py), atomic publishing (publish.py), serving (serving.py)."""
