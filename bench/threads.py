"""Pinning a CPU benchmark to its first N cores, before JAX (or a torch child) starts.

XLA's and PyTorch's thread pools size themselves by the process's CPU affinity, which child
processes inherit; one core also turns off XLA's multi-threaded Eigen, which would oversubscribe it.
"""

import os
import sys

from input_pipeline import cli


def count_from_argv(flag: str) -> int:
    """`--<flag>=N` read from the command line before absl parses it (before JAX starts); 0
    when absent or not a whole number (the flag's own check names it then)."""
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{flag}=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    return 0


def pin_threads(threads: int) -> None:
    """Restricts this process to its first `threads` schedulable cores (0: leaves it as it is)."""
    if not threads:
        return
    available = sorted(os.sched_getaffinity(0))
    if threads < 1 or threads > len(available):
        cli.fail(f"--threads={threads}: this machine schedules {len(available)} cores")
    os.sched_setaffinity(0, available[:threads])
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        )
