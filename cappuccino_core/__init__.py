"""Cappuccino: a self-running deep-RL crypto trading operation (library part)."""

__version__ = "0.1.0"
