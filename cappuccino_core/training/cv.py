"""Cross-validation splits over a time range of bar indices.

Combinatorial purged CV (López de Prado): cut the range into `n_groups` contiguous groups; every
choice of `k_test` groups is one split, tested on those groups and trained on the rest, minus an
embargo after each test group (bars there still carry the test period in their rolling features)
and a purge before it (the last training decisions' rewards would come from test bars).
Walk-forward: `n_groups` groups; split i trains on everything before group i+1 and tests on it.

A split's training part is a list of contiguous segments; they are trained on as separate
episodes and never glued together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..common.intervals import merge, subtract

Segment = tuple[int, int]  # [lo, hi) bar indices


@dataclass(frozen=True)
class Split:
    index: int
    train: list[Segment]
    test: list[Segment]


def _groups(lo: int, hi: int, n: int) -> list[Segment]:
    edges = [lo + (hi - lo) * i // n for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def cpcv_splits(lo: int, hi: int, n_groups: int = 6, k_test: int = 2, embargo: int = 48,
                purge: int = 1, min_segment: int = 48) -> list[Split]:
    groups = _groups(lo, hi, n_groups)
    splits = []
    for i, test_ids in enumerate(itertools.combinations(range(n_groups), k_test)):
        test = merge([groups[g] for g in test_ids])
        train = [groups[g] for g in range(n_groups) if g not in test_ids]
        train = merge(train)
        for a, b in test:
            train = subtract(train, (a - purge, b + embargo))
        splits.append(Split(i, [s for s in train if s[1] - s[0] >= min_segment], test))
    return splits


def walk_forward_splits(lo: int, hi: int, n_groups: int = 6, purge: int = 1,
                        min_segment: int = 48) -> list[Split]:
    groups = _groups(lo, hi, n_groups)
    splits = []
    for i in range(1, n_groups):
        train = [(lo, groups[i][0] - purge)]
        splits.append(Split(i - 1, [s for s in train if s[1] - s[0] >= min_segment],
                            [groups[i]]))
    return splits


def make_splits(kind: str, lo: int, hi: int, n_groups: int, k_test: int, embargo: int) -> list[Split]:
    if kind == "cpcv":
        return cpcv_splits(lo, hi, n_groups, k_test, embargo)
    if kind == "walk_forward":
        return walk_forward_splits(lo, hi, n_groups)
    raise ValueError(f"unknown CV scheme {kind!r}")
