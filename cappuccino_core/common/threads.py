"""How many threads torch may use: the cores this process is given, shared with its siblings.

Oversubscribed torch threads spin on each other: with two training workers and the trader on
2 cores, each using every core, one PPO update went from ~0.3 s to 7-15 s. So every process
that runs torch sets its thread count once at start (`set_torch_threads`):

- `CAPPUCCINO_TORCH_THREADS`, when set, is the operator's word;
- else the cores the process may run on (`os.sched_getaffinity`, which systemd's
  `CPUAffinity=` and `AllowedCPUs=` and `taskset` restrict), divided by the processes that
  share them: `training.workers_per_host` for a trainer, and the trader, the sync and the
  deployer take one thread each (a 10-member decision is 0.4 ms on one thread).

Inter-op parallelism is set to one thread everywhere: none of our graphs has independent
branches worth a pool.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
ENV = "CAPPUCCINO_TORCH_THREADS"


def cores_given() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads(share: int = 1) -> int:
    """Threads for one of `share` processes that split the cores this one is given."""
    asked = os.environ.get(ENV)
    if asked:
        return max(1, int(asked))
    return max(1, cores_given() // max(1, share))


def set_torch_threads(share: int = 1, role: str = "process") -> int:
    import torch
    n = torch_threads(share)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has run: it can be set only once
        pass
    log.info("%s: torch uses %d thread(s) of %d core(s) given", role, n, cores_given())
    return n
