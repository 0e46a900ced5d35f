"""REFERENCE ONLY, not product code: the classic FinRL StockTradingEnv step, one environment
at a time, in plain Python and numpy (FinRL reads each day's row with pandas `df.loc`; here
the row comes from numpy arrays, which is faster, so the ratio printed against it is a
conservative one). It keeps FinRL's structure: a Python list state rebuilt every step from the
close prices, holdings and one list per technical indicator, a Python loop over assets to sell
and then to buy (integer shares, `hmax` per trade, fees on each), and the per-step memories
(actions, assets, dates, rewards, states) that FinRL keeps for its reports."""

from __future__ import annotations

import numpy as np


class FinRLStyleEnv:
    def __init__(self, close: np.ndarray, features: np.ndarray, initial_amount=100_000.0,
                 hmax=100, buy_cost_pct=0.0025, sell_cost_pct=0.0025, reward_scaling=1e-4):
        self.close = close                       # [T, A]
        self.tech = [features[:, :, f] for f in range(features.shape[2])]  # per indicator [T, A]
        self.stock_dim = close.shape[1]
        self.initial_amount, self.hmax = initial_amount, hmax
        self.buy_cost_pct, self.sell_cost_pct = buy_cost_pct, sell_cost_pct
        self.reward_scaling = reward_scaling
        self.reset()

    def reset(self):
        self.day = 0
        self.state = self._initial_state()
        self.cost = 0.0
        self.trades = 0
        self.asset_memory = [self.initial_amount]
        self.rewards_memory, self.actions_memory, self.state_memory = [], [], []
        self.date_memory = [self.day]
        return self.state

    def _initial_state(self):
        return ([self.initial_amount] + self.close[self.day].tolist() + [0] * self.stock_dim
                + sum((t[self.day].tolist() for t in self.tech), []))

    def _update_state(self):
        return ([self.state[0]] + self.close[self.day].tolist()
                + list(self.state[self.stock_dim + 1:self.stock_dim * 2 + 1])
                + sum((t[self.day].tolist() for t in self.tech), []))

    def _total_asset(self):
        d = self.stock_dim
        return self.state[0] + sum(np.array(self.state[1:d + 1])
                                   * np.array(self.state[d + 1:d * 2 + 1]))

    def _sell_stock(self, index, action):
        d = self.stock_dim
        if self.state[index + 1] > 0 and self.state[index + d + 1] > 0:
            sell_num_shares = min(abs(action), self.state[index + d + 1])
            sell_amount = self.state[index + 1] * sell_num_shares * (1 - self.sell_cost_pct)
            self.state[0] += sell_amount
            self.state[index + d + 1] -= sell_num_shares
            self.cost += self.state[index + 1] * sell_num_shares * self.sell_cost_pct
            self.trades += 1
            return sell_num_shares
        return 0

    def _buy_stock(self, index, action):
        d = self.stock_dim
        if self.state[index + 1] > 0:
            available_amount = self.state[0] // (self.state[index + 1] * (1 + self.buy_cost_pct))
            buy_num_shares = min(available_amount, action)
            buy_amount = self.state[index + 1] * buy_num_shares * (1 + self.buy_cost_pct)
            self.state[0] -= buy_amount
            self.state[index + d + 1] += buy_num_shares
            self.cost += self.state[index + 1] * buy_num_shares * self.buy_cost_pct
            self.trades += 1
            return buy_num_shares
        return 0

    def step(self, actions: np.ndarray):
        terminal = self.day >= len(self.close) - 1
        if terminal:
            state = self.reset()
            return state, 0.0, True, False, {}
        actions = (actions * self.hmax).astype(int)
        begin_total_asset = self._total_asset()
        argsort_actions = np.argsort(actions)
        sell_index = argsort_actions[:np.where(actions < 0)[0].shape[0]]
        buy_index = argsort_actions[::-1][:np.where(actions > 0)[0].shape[0]]
        for index in sell_index:
            actions[index] = self._sell_stock(index, actions[index]) * (-1)
        for index in buy_index:
            actions[index] = self._buy_stock(index, actions[index])
        self.actions_memory.append(actions)
        self.day += 1
        self.state = self._update_state()
        end_total_asset = self._total_asset()
        self.asset_memory.append(end_total_asset)
        self.date_memory.append(self.day)
        reward = end_total_asset - begin_total_asset
        self.rewards_memory.append(reward)
        self.state_memory.append(self.state)
        return self.state, reward * self.reward_scaling, False, False, {}
