"""Layer 2, brokers: the interface (base.py), the simulated broker with its book in the
database (sim.py), Alpaca (alpaca.py) and the HTTP client both Alpaca APIs share
(alpaca_http.py, also used by data/alpaca_source.py).

May import: common, storage.
"""
