"""REFERENCE ONLY, not product code: a per-step, single-environment numpy trading loop in the
classic FinRL style (StockTradingEnv: a Python list state, a Python loop over assets to sell
then buy, fees per trade, one environment stepped at a time). The benchmarks measure it in the
same run as Cappuccino's batched environment and print the ratio."""

from __future__ import annotations

import numpy as np


class FinRLStyleEnv:
    def __init__(self, close: np.ndarray, features: np.ndarray, initial_amount=100_000.0,
                 hmax=100, fee=0.0025, reward_scaling=1e-4):
        self.close, self.features = close, features  # [T, A], [T, A, F]
        self.n_assets = close.shape[1]
        self.initial_amount, self.hmax, self.fee = initial_amount, hmax, fee
        self.reward_scaling = reward_scaling
        self.reset()

    def reset(self):
        self.day = 0
        self.state = ([self.initial_amount] + self.close[0].tolist() + [0] * self.n_assets
                      + self.features[0].ravel().tolist())
        self.asset_memory = [self.initial_amount]
        return self.state

    def _value(self):
        prices = np.array(self.state[1:1 + self.n_assets])
        shares = np.array(self.state[1 + self.n_assets:1 + 2 * self.n_assets])
        return self.state[0] + float((prices * shares).sum())

    def _sell(self, index, action):
        price = self.state[index + 1]
        held = self.state[index + self.n_assets + 1]
        if price > 0 and held > 0:
            n = min(abs(action), held)
            self.state[0] += price * n * (1 - self.fee)
            self.state[index + self.n_assets + 1] -= n
        return

    def _buy(self, index, action):
        price = self.state[index + 1]
        if price > 0:
            available = self.state[0] // (price * (1 + self.fee))
            n = min(available, action)
            self.state[0] -= price * n * (1 + self.fee)
            self.state[index + self.n_assets + 1] += n

    def step(self, actions: np.ndarray):
        begin = self._value()
        actions = (actions * self.hmax).astype(int)
        order = np.argsort(actions)
        for index in order[:np.where(actions < 0)[0].shape[0]]:
            self._sell(index, actions[index])
        for index in order[::-1][:np.where(actions > 0)[0].shape[0]]:
            self._buy(index, actions[index])
        self.day += 1
        done = self.day >= len(self.close) - 1
        self.state = ([self.state[0]] + self.close[self.day].tolist()
                      + list(self.state[1 + self.n_assets:1 + 2 * self.n_assets])
                      + self.features[self.day].ravel().tolist())
        end = self._value()
        self.asset_memory.append(end)
        reward = (end - begin) * self.reward_scaling
        if done:
            self.reset()
        return self.state, reward, done, {}
