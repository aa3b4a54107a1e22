"""Pinning a CPU benchmark to its first N cores, before JAX (or a torch child) starts.

XLA's and PyTorch's thread pools size themselves by the process's CPU affinity, which child
processes inherit; one core also turns off XLA's multi-threaded Eigen, which would oversubscribe it.
"""

import os
import sys


def pin_threads(threads: int) -> None:
    """Restricts this process to its first `threads` schedulable cores (0: leaves it as it is)."""
    if not threads:
        return
    available = sorted(os.sched_getaffinity(0))
    if threads < 1 or threads > len(available):
        sys.exit(f"--threads={threads}: this machine schedules {len(available)} cores")
    os.sched_setaffinity(0, available[:threads])
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        )
