"""Metric writers without TensorFlow: console, a JSON-lines file and TensorBoard event files.

Only process 0 writes, so a multi-host run logs once.
"""

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import jax
from tensorboardX import SummaryWriter


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
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (workdir / "metrics.jsonl").open("a")
        self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: Mapping[str, float], *, echo: bool = True) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": step} | {k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in clean.items():
            self._tb.add_scalar(name, value, step)
        if echo:
            logging.info("%s", format_metrics(step, clean))

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        if self.enabled:
            self._tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in hparams.items()))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
