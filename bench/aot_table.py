"""The largest batch that fits by target, dtype, remat, sharding, layers: a grid of AOT compiles.

    .venv-aot/bin/python -m bench.aot_table --targets=v5e-8,v5p-8,v6e-8,h100-8 --jobs=2 \\
        --out=workdirs/aot_table [--layers=scan,unrolled]

Each cell is `python -m focusclip_jax.aot --config=<config> --topology=<target> --find_max_batch`
with `model.dtype`, `model.remat` and the mesh overridden (data-parallel: `mesh.data=-1`; FSDP:
`mesh.data=1 mesh.fsdp=-1`), and `model.scan_layers` where `--layers` says (`config`: the config's
own; `scan`; `unrolled`), run as its own process (`--jobs` at a time), its report kept as
`<out>/<cell>.json`; a cell whose report exists is not compiled again, so an interrupted grid
resumes. A cell already found on another target of the same platform seeds the search's first
batch (its per-device memory line carried to this target's memory and devices): two or three
compiles instead of four to six; a config with `model.scan_layers` compiles one more, the
largest fit's unrolled twin, for the TPU compiler's estimate of its step (`focusclip_jax.aot`).
Prints the Markdown table of PERFORMANCE.md, then per TPU target and dtype the remat and
sharding the compiler estimates fastest at their largest batches. A report that does not read as
one (cut short, emptied, edited) is named in a warning and its cell counts as not run: compiled
again, or shown as not run with `--table_only`.
"""

import concurrent.futures
import itertools
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from absl import flags

from focusclip_jax import targets
from focusclip_jax.models import layers
from input_pipeline import cli

FLAGS = flags.FLAGS
MESHES = {
    "dp": ("--config.mesh.data=-1", "--config.mesh.fsdp=1"),
    "fsdp": ("--config.mesh.data=1", "--config.mesh.fsdp=-1"),
}
LAYERS = {  # --layers: the model.scan_layers override
    "config": (),
    "scan": ("--config.model.scan_layers=True",),
    "unrolled": ("--config.model.scan_layers=False",),
}
Cell = tuple[str, str, str, str, str]  # target, dtype, remat, mode, layers


def define_flags() -> None:
    """The command line (defined when run, not when imported: tests import the table's
    functions beside other tools' flags)."""
    flags.DEFINE_string("config", "configs/pretrain.py", "Config file (with :variants).")
    flags.DEFINE_list("targets", ["v5e-8", "v5p-8", "v6e-8", "h100-8"], "Topologies.")
    flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "model.dtype values.")
    flags.DEFINE_list("remats", ["none", "full"], "model.remat values.")
    flags.DEFINE_list("modes", ["dp", "fsdp"], "dp (mesh.data=-1) and/or fsdp (mesh.fsdp=-1).")
    flags.DEFINE_list(
        "layers", ["config"], "model.scan_layers: the config's own, scan and/or unrolled."
    )
    flags.DEFINE_list("overrides", [], "More --config.* overrides for every cell (key=value).")
    flags.DEFINE_integer("jobs", 1, "Cells compiled at the same time.")
    flags.DEFINE_float("batch_tolerance", 1 / 16, "Each search stops within this fraction.")
    flags.DEFINE_string("out", "workdirs/aot_table", "Folder for the cells' reports and logs.")
    flags.DEFINE_bool("table_only", False, "Print the table of the reports there, compile nothing.")
    cli.check_flags(
        config=cli.Text(cli.config_file_problem),
        targets=cli.Text(targets.name_problem),
        dtypes=cli.Choices(("float32", "bfloat16")),
        remats=cli.Choices(layers.REMATS),
        modes=cli.Choices(tuple(MESHES)),
        layers=cli.Choices(tuple(LAYERS)),
        overrides=cli.Text(lambda item: None if "=" in item else "expected key=value"),
        jobs=cli.Number(integer=True, at_least=1),
        batch_tolerance=cli.Number(above=0, below=1),
        out=cli.Path("new_folder"),
    )


# The numbers a report must hold (dotted: inside a dict) for the table, and to seed a search.
TABLE_NEEDS = ("batch", "batch_per_device", "memory.total", "roofline_images_per_s")
SEED_NEEDS = ("batch", "batch_per_device", "memory.total", "memory.temporary")
ESTIMATE = ("estimated_images_per_s", "estimated_mfu")  # where there is an estimated_step_s
_warned: set[str] = set()  # each unreadable report named once per run


def _number(report: dict[str, Any], key: str) -> float | None:
    value: Any = report
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _problem(report: Any, needs: tuple[str, ...]) -> str | None:
    """What keeps `report` from being a cell's report (None: nothing)."""
    if not isinstance(report, dict):
        return "not a JSON object"
    lacking = [key for key in needs if _number(report, key) is None]
    if report.get("estimated_step_s"):
        lacking += [key for key in ("estimated_step_s", *ESTIMATE) if _number(report, key) is None]
    if report.get("bytes_accessed") and _number(report, "bytes_accessed") is None:
        lacking.append("bytes_accessed")
    if not isinstance(report.get("find_max_batch", []), list):
        lacking.append("find_max_batch")
    return f"no number {lacking[0]!r}" if lacking else None


def read_report(path: Path, needs: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A cell's report, or None where there is none, or where it does not read as JSON or lacks
    one of the numbers in `needs` (named in a warning, once: the cell counts as not run)."""
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"unreadable ({error})"
    else:
        problem = _problem(report, needs)
    if problem is None:
        return report
    warning = f"{path}: {problem}; its cell counts as not run"
    if warning not in _warned:
        _warned.add(warning)
        logging.warning("%s", warning)
    return None


def cell_name(target: str, dtype: str, remat: str, mode: str, scan: str = "config") -> str:
    return f"{target}_{dtype}_{remat}_{mode}" + ("" if scan == "config" else f"_{scan}")


def first_batch(target: str, dtype: str, remat: str, mode: str, scan: str, out: Path) -> int | None:
    """Where a cell's search starts: from the same cell found on another target of the same
    platform, its per-device state and code plus temporaries per example (an overestimate, so
    the first try errs towards fitting) carried to this target; None: the config's batch."""
    new = targets.parse(target)
    for other in FLAGS.targets:
        path = out / f"{cell_name(other, dtype, remat, mode, scan)}.json"
        if other == target or targets.parse(other).chip.platform != new.chip.platform:
            continue
        found = read_report(path, SEED_NEEDS)
        if found is None or not found["batch"] or found["batch_per_device"] <= 0:
            continue
        memory = found["memory"]
        fixed = memory["total"] - memory["temporary"]
        per_example = memory["temporary"] / found["batch_per_device"]
        per_device = int(0.95 * (new.usable_bytes - fixed) / per_example)
        if per_device >= 1:
            return per_device * new.num_devices
    return None


def run_cell(cell: Cell, out: Path) -> tuple[str, str]:
    """Compiles one cell (unless its report exists and reads); returns (cell, status)."""
    target, dtype, remat, mode, scan = cell
    name = cell_name(*cell)
    report = out / f"{name}.json"
    if read_report(report, TABLE_NEEDS + SEED_NEEDS) is not None:
        return name, "cached"
    command = [
        sys.executable,
        "-m",
        "focusclip_jax.aot",
        f"--config={FLAGS.config}",
        f"--topology={target}",
        "--find_max_batch",
        f"--batch_tolerance={FLAGS.batch_tolerance}",
        f"--json={report}",
        f"--config.model.dtype={dtype}",
        f"--config.model.remat={remat}",
        *MESHES[mode],
        *LAYERS[scan],
        *(f"--config.{o}" for o in FLAGS.overrides),
    ]
    first = first_batch(*cell, out)
    if first:
        command.append(f"--config.train.batch_size={first}")
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    minutes = (time.perf_counter() - start) / 60
    return name, f"exit {done.returncode} after {minutes:.1f} min"


def table(out: Path, cells: list[Cell]) -> str:
    """The Markdown table of the cells' reports: the largest batch, its memory, the bound at the
    chip's peak and the compiler's estimate at that batch (TPUs; blank where there is none)."""
    lines = [
        "| target | dtype | remat | sharding | layers | largest global batch | per device | GiB "
        "per device at it | img/s at peak (bound) | estimated ms/step | estimated img/s | "
        "estimated MFU | GiB accessed per device | compiles |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell in cells:
        path = out / f"{cell_name(*cell)}.json"
        row = "|" + "|".join(f" {value} " for value in cell) + "|"
        r = read_report(path, TABLE_NEEDS)
        if r is None:
            lines.append(row + (" not run yet |" if not path.exists() else " not run |") + " |" * 8)
            continue
        estimate, accessed = r.get("estimated_step_s"), r.get("bytes_accessed")
        lines.append(
            row + f" {r['batch']} | {r['batch_per_device']:g} | "
            f"{r['memory']['total'] / 2**30:.2f} | {r['roofline_images_per_s']:.0f} | "
            + (
                f"{1000 * estimate:.1f} | {r['estimated_images_per_s']:.0f} | "
                f"{r['estimated_mfu']:.1%} |"
                if estimate
                else " | | |"
            )
            + (f" {accessed / 2**30:.2f} |" if accessed else " |")
            + f" {len(r.get('find_max_batch', []))} |"
        )
    return "\n".join(lines)


def fastest(out: Path, cells: list[Cell]) -> list[str]:
    """Per target and dtype, the remat, sharding and layers whose largest batch the TPU compiler
    estimates fastest in img/s: the setting to train at that batch with, picked by time, not by
    memory alone (TPUs only: XLA's GPU compiler makes no estimate). Programs with while loops
    (FSDP's windowed einsums) are left out: their estimates count each loop's body once."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for target, dtype, remat, mode, scan in cells:
        path = out / f"{cell_name(target, dtype, remat, mode, scan)}.json"
        report = read_report(path, ("batch",)) or {}
        rate, mfu = _number(report, ESTIMATE[0]), _number(report, ESTIMATE[1])
        if report.get("while_loops"):  # an undercount of its time (focusclip_jax.aot)
            continue
        if rate and rate > best.get((target, dtype), (0.0, ""))[0]:
            best[target, dtype] = (
                rate,
                f"remat={remat}, {mode}, layers {scan}, global batch {report['batch']}: "
                f"estimated {rate:.0f} img/s" + ("" if mfu is None else f", {mfu:.1%} MFU"),
            )
    return [f"fastest on {t} in {d}: {line}" for (t, d), (_, line) in best.items()]


def main(argv: list[str]) -> None:
    del argv
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = list(
        itertools.product(FLAGS.targets, FLAGS.dtypes, FLAGS.remats, FLAGS.modes, FLAGS.layers)
    )
    if FLAGS.table_only:
        print("\n".join([table(out, cells), *fastest(out, cells)]))
        return
    with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
        for name, status in pool.map(lambda cell: run_cell(cell, out), cells):
            print(f"{name}: {status}", flush=True)
    print("\n".join([table(out, cells), *fastest(out, cells)]))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
