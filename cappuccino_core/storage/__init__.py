"""Layer 1, the databases: the product's tables, engines, migrations and events
(database.py) and the only reader of Optuna's tables (optuna_db.py).

May import: common.
"""
