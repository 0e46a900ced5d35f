"""Every process that runs torch takes the cores it is given, shared with its siblings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cappuccino_core.common.threads import ENV

SHOW = ("import torch; from cappuccino_core.common.threads import set_torch_threads; "
        "n = set_torch_threads({share}); print(n, torch.get_num_threads(), "
        "torch.get_num_interop_threads())")


def threads_in_child(cpus: set[int], share: int, asked: str | None = None) -> tuple[int, ...]:
    """A fresh process pinned to `cpus` (as systemd's CPUAffinity= or AllowedCPUs= would)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if asked:
        env[ENV] = asked
    out = subprocess.run([sys.executable, "-c", SHOW.format(share=share)], env=env,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus), capture_output=True,
                         text=True, check=True, timeout=120)
    return tuple(int(x) for x in out.stdout.split())


def test_threads_follow_the_cores_given_and_the_workers_sharing_them():
    given = sorted(os.sched_getaffinity(0))
    if len(given) < 2:
        pytest.skip("needs 2 cores")
    two, one = set(given[:2]), {given[0]}
    assert threads_in_child(two, share=1) == (2, 2, 1)  # alone: every core given
    assert threads_in_child(two, share=2) == (1, 1, 1)  # one of two workers: half
    assert threads_in_child(one, share=1) == (1, 1, 1)  # CPUAffinity=0: one core
    assert threads_in_child(one, share=4) == (1, 1, 1)  # never fewer than one
    assert threads_in_child(two, share=2, asked="2") == (2, 2, 1)  # the operator's word
