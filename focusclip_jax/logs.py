"""Metric writers without TensorFlow: console, a JSON-lines file and TensorBoard event files.

Only process 0 writes, so a multi-host run logs once. A bucket workdir (gs://...) works through
etils.epath and tensorboardX's own GCS writer (both need `gcsfs` installed, as launch/ does).
"""

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath
from flax.traverse_util import flatten_dict
from tensorboardX import SummaryWriter

PARAMETERS_FILE = "parameters.txt"
# tensorboardX warns at every non-finite scalar it writes: a diverged run would repeat it for each
# metric at each step. The trainer reports non-finite steps itself (`train.check_finite`), and
# metrics.jsonl keeps the values ("nan").
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


def tensorboard_name(name: str) -> str:
    """TensorBoard's legal summary name (`image_to_text_R@1` → `image_to_text_R_1`)."""
    return re.sub(r"[^\w.\-/]", "_", name)


def write_parameter_table(abstract_params: Any, workdir: str | Path) -> str:
    """Every parameter's path, shape, dtype and count to `<workdir>/parameters.txt` (process
    0); returns the one-line summary for the console."""
    rows = [
        ("/".join(map(str, path)), tuple(leaf.shape), str(leaf.dtype), int(np.prod(leaf.shape)))
        for path, leaf in sorted(flatten_dict(abstract_params).items(), key=lambda kv: kv[0])
    ]
    total = sum(count for *_, count in rows)
    path = epath.Path(workdir) / PARAMETERS_FILE
    if jax.process_index() == 0:
        width = max(len(name) for name, *_ in rows)
        lines = [f"{'parameter':<{width}}  {'shape':<20} {'dtype':<9} {'count':>12}"]
        lines += [
            f"{name:<{width}}  {shape!s:<20} {dtype:<9} {count:>12,}"
            for name, shape, dtype, count in rows
        ]
        lines.append(f"{'total':<{width}}  {'':<20} {'':<9} {total:>12,}")
        path.write_text("\n".join(lines) + "\n")
    return f"{total:,} parameters in {len(rows)} arrays (table: {path})"


def format_metrics(step: int, metrics: Mapping[str, float]) -> str:
    parts = [f"step {step}"]
    for name, value in metrics.items():
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return " | ".join(parts)


class MetricWriter:
    """Scalars to `<workdir>/metrics.jsonl`, TensorBoard events under `<workdir>/tb`, and logs."""

    def __init__(self, workdir: str | Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        if not self.enabled:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = workdir / "metrics.jsonl"
        # Object stores can't append: there the whole (small) file is rewritten at each write.
        remote = "://" in str(workdir)
        self._jsonl_lines: list[str] = []
        if remote and self._jsonl_path.exists():
            self._jsonl_lines = self._jsonl_path.read_text().splitlines(keepends=True)
        self._jsonl = None if remote else self._jsonl_path.open("a")
        self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: Mapping[str, float], *, echo: bool = True) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": step} | {k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}
        line = json.dumps(record) + "\n"
        if self._jsonl is None:
            self._jsonl_lines.append(line)
            self._jsonl_path.write_text("".join(self._jsonl_lines))
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for name, value in clean.items():
            self._tb.add_scalar(tensorboard_name(name), value, step)
        if echo:
            logging.info("%s", format_metrics(step, clean))

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        if self.enabled:
            self._tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in hparams.items()))

    def close(self) -> None:
        if self.enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            self._tb.close()
