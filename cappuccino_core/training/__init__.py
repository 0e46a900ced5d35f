"""Layer 6, training: Optuna trials of PPO agents (objective.py) over the search space
(search_space.py) and CV splits (cv.py), run by a worker (worker.py) in the foreground or as
systemd units (foreground.py, systemd.py).

May import: common, storage, broker, data, rl, artifacts (not ensemble: a sibling).
"""
