"""Brokers: the interface (base.py), the built-in simulated broker (sim.py), Alpaca (alpaca.py)."""
