"""Layer 5, model artifacts: a trained model's files and its `ModelSpec` (model.py), the
store they are uploaded to and the local cache (store.py), PPO diagnostics for TensorBoard
(tb_events.py).

May import: common, storage, broker, data, rl.
"""
