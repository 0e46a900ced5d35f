"""Layer 4, the reinforcement-learning core: the one trading arithmetic (env.py) and its
settings (env_settings.py), PPO (agent.py), backtests (backtest.py) and the window of bars
they cover (window.py).

May import: common, storage, broker, data.
"""
