"""Which parts of the compiled training step move the most bytes: **the TPU compiler's program,
read and approximated, not a measurement** (nothing runs).

    .venv-aot/bin/python -m bench.hlo_bytes --config=configs/pretrain.py --topology=v5e-8
    .venv-aot/bin/python -m bench.hlo_bytes --config=configs/pretrain.py --topology=v5e-8 \\
        --config.train.batch_size=256 --top=40 --json=bytes.json

Compiles the step's unrolled twin (`model.scan_layers=False`, as `focusclip_jax.aot` does for its
cost analysis: a scanned loop's body would count once) for the target with `aot.compile_step`,
then reads the optimised HLO (`compiled.as_text()`). Every instruction run as a kernel — at the
top level of the entry computation and of the computations it runs as control flow (loop
bodies, branches, calls), not inside fusions — is charged the bytes of its operands plus its
output (`kernel_bytes`): a fusion, a Mosaic kernel, a copy or a collective is one kernel,
whatever it does inside. Bitcasts, tuples, parameters, constants and the `-done` halves of
asynchronous ops move nothing here, nor do `ConcatBitcast` custom calls (the TPU memory
scheduler joining prefetched slices in place). Arrays in a memory space other than 0 (`S(1)`:
on-chip VMEM on TPUs) are counted apart from the rest (HBM).

Each kernel gets a category `pass | tower | part` from its metadata: the pass from the JAX name
stack in `op_name` (fwd; bwd under `transpose(...)`; recompute under `rematted_computation`;
update for the optimizer; collective), the tower and the part of the model from the Python
call stack the HLO keeps (`stack_frame_id`: e.g. `FocusCLIP.encode_text`, then
`_attention_with_dropout`). Blocks under `jax.checkpoint` (`model.remat`) are traced without
their caller in the forward pass, so their tower shows as the block class (`PreNormBlock*`:
ViT and CLIP's text transformer; `PostNormBlock*`: BERT). The memory scheduler's prefetches and
evictions (`copy-start`, `slice-start`) carry no metadata: they take their first consumer's,
as pass `scheduler copy`. Prints the largest groups of identical kernels (a layer's kernel
repeated in every layer is one row), the sum per category and the total against XLA's
`cost_analysis()` bytes accessed (the sum here comes to about 0.8 of it for the paper's step:
tiles' padding, in-place updates, operands read more than once inside a kernel and what stays
on chip are not modelled), with the compiler's estimate of the step time and of the program's
memory.

Beside the bytes, each kernel's own time estimate: libtpu writes `estimated_cycles` into the
backend config of the kernels it emits (fusions, copies, pads, reduces; not Mosaic kernels or
collectives). Their sum tracks the step's estimate (58.8 M cycles, 58.8 ms at v5e's 1.5 GHz,
against 62.0 ms for the CLIP/SigLIP baseline at batch 256 on v5e-8, 2026-12-08), so `cyc %`
says where the estimated time goes, and `--order=cycles` lists the largest by it: that is how
splash attention's padding of the ViT's q, k and v (12% of the cycles) was found.
"""

import collections
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from focusclip_jax import targets

if __name__ == "__main__":
    targets.configure_compile_only_environment()  # before JAX starts

import ml_collections
from absl import app, flags

from focusclip_jax import aot, config_checks
from input_pipeline import cli

size_text = aot.size_text

LABEL = "the TPU compiler's program, bytes approximated from its HLO, not a measurement"

# Instructions that move no data of their own, or whose data the paired `-start` counts.
FREE_OPCODES = frozenset(
    {
        "parameter",
        "constant",
        "get-tuple-element",
        "tuple",
        "bitcast",
        "after-all",
        "partition-id",
        "replica-id",
        "opt-barrier",
        "add-dependency",
        "domain",
        "iota",
    }
)
CONTROL_FLOW = {"while": ("body", "condition"), "call": ("to_apply",), "conditional": ()}
FREE_CUSTOM_CALLS = ("ConcatBitcast",)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[^\s=]+)\s*=\s*")
_COMPUTATION = re.compile(r"^(?P<entry>ENTRY\s+)?%(?P<name>[^\s(]+)\s*\(.*\{\s*$")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z][a-z0-9]*)\[(?P<dims>[0-9,]*)\](?P<layout>\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_CALLED = re.compile(r"\b(?P<key>\w+)=%(?P<name>[^\s,)}]+)")
_BRANCHES = re.compile(r"branch_computations=\{(?P<names>[^}]*)\}")
_ESTIMATED_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
ORDERS = ("bytes", "cycles")  # --order


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One instruction run as a kernel, with the bytes it reads and writes (approximate)."""

    name: str
    opcode: str  # fusion kind for fusions (kLoop, kOutput, ...), custom-call target for calls
    shape: str  # its output, layouts dropped
    hbm_bytes: int  # operands + output in memory space 0
    on_chip_bytes: int  # operands + output in other memory spaces (TPU VMEM: S(1))
    op_name: str
    stack_frame: int  # 0: none
    scheduled: bool = False  # a copy the memory scheduler placed; metadata: its consumer's
    cycles: int = 0  # the TPU compiler's estimate for this kernel (`estimated_cycles`), if any

    @property
    def bytes(self) -> int:
        return self.hbm_bytes + self.on_chip_bytes


def shape_bytes(shape: str) -> tuple[int, int]:
    """(bytes in memory space 0, bytes elsewhere) of an HLO shape: an array such as
    `bf16[256,12,512,512]{3,2,1,0:T(8,128)(2,1)}` or a tuple of them; tiles' padding ignored."""
    default, other = 0, 0
    for array in _ARRAY.finditer(shape):
        count = 1
        for dim in filter(None, array.group("dims").split(",")):
            count *= int(dim)
        size = int(count * aot.dtype_bytes(array.group("dtype")))
        space = _MEMORY_SPACE.search(array.group("layout") or "")
        if space and space.group(1) != "0":
            other += size
        else:
            default += size
    return default, other


def _closing(text: str, start: int) -> int:
    """The index just past the bracket group opening at `text[start]` ((), {} and [] nest)."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced brackets in HLO: {text[start : start + 80]!r}")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: tuple[str, ...]
    attributes: str  # everything after the operand list


def parse_instruction(line: str) -> Instruction | None:
    """`%name = shape opcode(operands), attributes`, or None for any other line."""
    head = _INSTRUCTION.match(line)
    if head is None:
        return None
    rest = line[head.end() :]
    shape_end = _closing(rest, 0) if rest.startswith("(") else rest.index(" ")
    opcode = re.match(r"\s*([\w\-]+)\(", rest[shape_end:])
    if opcode is None:
        return None
    open_at = shape_end + opcode.end() - 1
    close_at = _closing(rest, open_at)
    operands = tuple(re.findall(r"%([^\s,)]+)", rest[open_at:close_at]))
    return Instruction(
        head.group("name"), rest[:shape_end], opcode.group(1), operands, rest[close_at:]
    )


def parse_module(hlo: str) -> tuple[str, dict[str, list[Instruction]]]:
    """(the entry computation's name, every computation's instructions in order). An
    instruction may span lines (a Mosaic kernel's backend config does); a computation ends at a
    line that is `}` alone."""
    computations: dict[str, list[Instruction]] = {}
    entry, current, text = "", None, ""

    def flush() -> None:
        if current is not None and text and (instruction := parse_instruction(text)):
            current.append(instruction)

    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current, text = computations.setdefault(header.group("name"), []), ""
            if header.group("entry"):
                entry = header.group("name")
        elif line.rstrip() == "}":
            flush()
            current, text = None, ""
        elif current is not None:
            if _INSTRUCTION.match(line):
                flush()
                text = line
            else:
                text += "\n" + line
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return entry, computations


def _run_computations(entry: str, computations: dict[str, list[Instruction]]) -> list[str]:
    """The entry and every computation it runs as control flow (loop bodies and conditions,
    branches, calls), transitively; fusion bodies and reducers are parts of their kernel."""
    order, pending = [], [entry]
    while pending:
        name = pending.pop()
        if name in order or name not in computations:
            continue
        order.append(name)
        for instruction in computations[name]:
            if instruction.opcode not in CONTROL_FLOW:
                continue
            keys = CONTROL_FLOW[instruction.opcode]
            called = _CALLED.findall(instruction.attributes)
            pending += [callee for key, callee in called if key in keys or "computation" in key]
            for branches in _BRANCHES.finditer(instruction.attributes):
                pending += re.findall(r"%([^\s,}]+)", branches.group("names"))
    return order


def kernel_bytes(instruction: Instruction, shapes: dict[str, str]) -> tuple[int, int] | None:
    """(HBM, on-chip) bytes an instruction reads and writes: its operands plus its output; None
    for what moves no data (`FREE_OPCODES`, control flow, `-done` halves, ConcatBitcast). An
    asynchronous `-start` whose output is a tuple holds its operands and context beside the
    result: the result alone counts as written; a `slice-start` reads its slice only."""
    opcode = instruction.opcode
    if opcode in FREE_OPCODES or opcode in CONTROL_FLOW or opcode.endswith(("-done", "-update")):
        return None
    if opcode == "custom-call" and any(
        f'custom_call_target="{target}"' in instruction.attributes for target in FREE_CUSTOM_CALLS
    ):
        return None
    read = [shape_bytes(shapes.get(name, "")) for name in instruction.operands]
    written = shape_bytes(instruction.shape)
    if opcode.endswith("-start") and instruction.shape.startswith("("):
        written = tuple(max(0, written[i] - sum(r[i] for r in read)) for i in range(2))
        if opcode == "slice-start":  # ((operand), slice, context): reads only its slice
            read = [(sum(shape_bytes(_tuple_elements(instruction.shape)[1])), 0)]
    hbm = sum(r[0] for r in read) + written[0]
    return hbm, sum(r[1] for r in read) + written[1]


def estimated_cycles(instruction: Instruction) -> int:
    """The TPU compiler's estimate of the kernel's run time in chip cycles, which libtpu writes
    into the backend config of the kernels it emits itself (fusions, copies, pads, reduces); 0
    where there is none (Mosaic kernels, collectives, other compilers)."""
    found = _ESTIMATED_CYCLES.search(instruction.attributes)
    return int(found.group(1)) if found else 0


def _tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape `(a, (b, c), d)`."""
    elements, depth, start = [], 0, 1
    for index, char in enumerate(shape):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        if (char == "," and depth == 1) or depth == 0:
            elements.append(shape[start:index].strip())
            start = index + 1
        if depth == 0:
            break
    return elements


def _kind(instruction: Instruction) -> str:
    if instruction.opcode == "fusion":
        kind = re.search(r"\bkind=(\w+)", instruction.attributes)
        return f"fusion:{kind.group(1)}" if kind else "fusion"
    if instruction.opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', instruction.attributes)
        return f"custom-call:{target.group(1)}" if target else "custom-call"
    return instruction.opcode


def _metadata(instruction: Instruction) -> tuple[str, int]:
    op_name = re.search(r'op_name="([^"]*)"', instruction.attributes)
    frame = re.search(r"stack_frame_id=(\d+)", instruction.attributes)
    return (op_name.group(1) if op_name else "", int(frame.group(1)) if frame else 0)


def _consumer_metadata(
    name: str, users: dict[str, list[Instruction]], shapes: dict[str, str]
) -> tuple[str, int]:
    """The metadata of the first kernel that uses `name`'s data, looked for through the
    instructions that move nothing (`-done` halves, ConcatBitcast, bitcasts, tuples): the
    memory scheduler's copies carry none of their own."""
    pending, seen = [name], set()
    while pending:
        for user in users.get(pending.pop(0), []):
            if user.name in seen:
                continue
            seen.add(user.name)
            metadata = _metadata(user)
            if kernel_bytes(user, shapes) is not None and any(metadata):
                return metadata
            pending.append(user.name)
    return "", 0


def kernels(hlo: str) -> list[Kernel]:
    """Every instruction of an optimised HLO module run as a kernel (the module docstring), in
    program order, with its bytes (`kernel_bytes`). A kernel without metadata (the memory
    scheduler's prefetches and evictions) takes its first consumer's, marked `scheduled`."""
    entry, computations = parse_module(hlo)
    shapes = {i.name: i.shape for body in computations.values() for i in body}
    run = [i for name in _run_computations(entry, computations) for i in computations[name]]
    users: dict[str, list[Instruction]] = collections.defaultdict(list)
    for instruction in run:
        for operand in instruction.operands:
            users[operand].append(instruction)
    found = []
    for instruction in run:
        moved = kernel_bytes(instruction, shapes)
        if moved is None:
            continue
        op_name, frame = _metadata(instruction)
        scheduled = not (op_name or frame)
        if scheduled:
            op_name, frame = _consumer_metadata(instruction.name, users, shapes)
        found.append(
            Kernel(
                name=instruction.name,
                opcode=_kind(instruction),
                shape=re.sub(r"\{[^}]*\}", "", instruction.shape),
                hbm_bytes=moved[0],
                on_chip_bytes=moved[1],
                op_name=op_name,
                stack_frame=frame,
                scheduled=scheduled,
                cycles=estimated_cycles(instruction),
            )
        )
    return found


# ----------------------------------------------------------------------------- the call stacks


@dataclasses.dataclass(frozen=True)
class Frame:
    file: str
    function: str
    line: int


def stack_frames(hlo: str) -> dict[int, list[Frame]]:
    """The Python call stacks HLO metadata points at (`stack_frame_id`), innermost frame first,
    from the module's FileNames, FunctionNames, FileLocations and StackFrames tables. The text
    prints a frame's `parent_frame_id` as its parent's id plus one (1: no parent), as XLA 0.12
    writes it: with that reading every parent is a caller of its child."""
    tables: dict[str, str] = {}
    for table in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
        found = re.search(
            rf"^{table}\n(.*?)(?:\n\n|\n(?=[A-Z%])|\Z)", hlo, re.MULTILINE | re.DOTALL
        )
        tables[table] = found.group(1) if found else ""
    quoted = re.compile(r'^(\d+) "(.*)"$', re.MULTILINE)
    files = {int(i): name for i, name in quoted.findall(tables["FileNames"])}
    functions = {int(i): name for i, name in quoted.findall(tables["FunctionNames"])}
    locations = {
        int(i): Frame(files.get(int(f), "?"), functions.get(int(g), "?"), int(line))
        for i, f, g, line in re.findall(
            r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)",
            tables["FileLocations"],
            re.MULTILINE,
        )
    }
    parents = {
        int(i): (int(location), int(parent))
        for i, location, parent in re.findall(
            r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)",
            tables["StackFrames"],
            re.MULTILINE,
        )
    }
    stacks: dict[int, list[Frame]] = {}
    for frame_id in parents:
        stack, seen, current = [], set(), frame_id
        while current in parents and current not in seen:
            seen.add(current)
            location, parent = parents[current]
            stack.append(locations.get(location, Frame("?", "?", 0)))
            current = parent - 1  # the printed parent id is one past the parent's
        stacks[frame_id] = stack
    return stacks


# ----------------------------------------------------------------------------- categories

# (function in the call stack, the tower it means), outermost caller checked first.
TOWERS = (
    ("contrastive_loss", "loss"),
    ("render_heatmaps", "heatmaps"),
    ("FocusCLIP.focus", "focus masking"),
    ("FocusCLIP.encode_image", "image tower"),
    ("ViT.__call__", "focus tower"),  # ViT outside encode_image: the separate focus tower
    ("FocusCLIP.encode_text", "text tower"),
    ("global_norm", "optimizer"),
    ("apply_updates", "optimizer"),
)
# Blocks under jax.checkpoint are traced without their caller: the block class stands in.
REMAT_BLOCKS = {
    "PreNormBlock.__call__": "PreNormBlock*",
    "PostNormBlock.__call__": "PostNormBlock*",
}
# (function in the call stack, the part of the model it means), innermost frame checked first.
PARTS = (
    ("apply_dropout", "dropout"),
    ("_attention_with_dropout", "attention core"),
    ("_splash_attention", "attention core"),
    ("_cudnn_attention", "attention core"),
    ("MultiHeadAttention._splash.<locals>.<lambda>", "attention layout"),  # pad, swap axes
    ("Einsum.__call__", "attention projections"),
    ("MultiHeadAttention._splash", "attention layout"),
    ("MultiHeadAttention.__call__", "attention projections"),
    ("Mlp.__call__", "mlp"),
    ("LayerNorm.__call__", "layer norm"),
    ("Embed.__call__", "embeddings"),
    ("ViT.patchify", "patch embedding"),
    ("_embed", "projection head"),
    ("global_norm", "gradient norm"),
    ("apply_updates", "update"),
)
COLLECTIVE_OPCODES = tuple(f"{kind}-start" for kind in aot.COLLECTIVE_KINDS) + aot.COLLECTIVE_KINDS


def category(kernel: Kernel, stack: list[Frame]) -> str:
    """`pass | tower | part` of a kernel (the module docstring): the pass from its `op_name`
    (fwd, bwd, recompute; update for the optimizer; collective), the tower and the part from
    its call stack (`stack`, innermost first). Kernels without a source — the memory scheduler's
    prefetches and evictions (`copy-start`, `slice-start`) — are grouped by opcode."""
    if not stack and not kernel.op_name:
        if kernel.scheduled:  # its data goes to the step's outputs, no kernel reads it
            return "scheduler copy | step outputs | -"
        return f"{kernel.opcode} | ? | ?"
    functions = [frame.function for frame in stack]
    tower = next(
        (label for name, label in TOWERS for function in reversed(functions) if function == name),
        None,
    )
    if tower is None:
        tower = next((REMAT_BLOCKS[f] for f in functions if f in REMAT_BLOCKS), None)
    if tower is None:
        tower = "optimizer" if "train_step" in functions else "other"
    part = next(
        (label for function in functions for name, label in PARTS if function == name), None
    )
    if part == "dropout" and "_attention_with_dropout" in functions:
        part = "attention dropout"
    if part is None:
        project = [f for f in functions if f not in ("train_step", "compile_step", "<module>")]
        part = project[0].split(".<locals>")[0] if project else "update"
        part = "update" if part == "train_step" else part
    if kernel.scheduled:
        step = "scheduler copy"
    elif kernel.opcode in COLLECTIVE_OPCODES:
        step = "collective"
    elif "rematted_computation" in kernel.op_name:
        step = "recompute"
    elif "transpose(" in kernel.op_name:
        step = "bwd"
    elif tower == "optimizer":
        step = "update"
    else:
        step = "fwd"
    return f"{step} | {tower} | {part}"


def short_op_name(op_name: str) -> str:
    """The JAX name stack without the step's own prefix."""
    return re.sub(r"^jit\([^)]*\)/", "", op_name)


# ----------------------------------------------------------------------------- the report


def summarise(
    hlo: str, top: int, *, order: str = "bytes", smallest_share: float = 0.001
) -> dict[str, Any]:
    """The kernels of `hlo` (`kernels`): the `top` largest groups of identical kernels (same
    category, kind, output and op_name: a layer's kernel repeated in every layer) and the sum
    per category (those under `smallest_share` of the total summed as one line), largest by
    `order`: bytes, or the compiler's estimated cycles."""
    found = kernels(hlo)
    stacks = stack_frames(hlo)
    total = sum(getattr(k, order) for k in found) or 1
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    by_category: dict[str, dict[str, int]] = collections.defaultdict(
        lambda: {"kernels": 0, "bytes": 0, "hbm_bytes": 0, "cycles": 0}
    )
    for kernel in found:
        label = category(kernel, stacks.get(kernel.stack_frame, []))
        op_name = short_op_name(kernel.op_name)
        group = groups.setdefault(
            (label, kernel.opcode, kernel.shape, op_name),
            {"count": 0, "bytes": 0, "hbm_bytes": 0, "cycles": 0, "kind": kernel.opcode,
             "shape": kernel.shape, "category": label, "op_name": op_name,
             "first": kernel.name},
        )  # fmt: skip
        for row in (group, by_category[label]):
            row["kernels" if row is not group else "count"] += 1
            row["bytes"] += kernel.bytes
            row["hbm_bytes"] += kernel.hbm_bytes
            row["cycles"] += kernel.cycles
    largest = sorted(groups.values(), key=lambda g: -g[order])[:top]
    categories = {}
    rest = {"kernels": 0, "bytes": 0, "hbm_bytes": 0, "cycles": 0, "categories": 0}
    for label, row in sorted(by_category.items(), key=lambda kv: -kv[1][order]):
        if row[order] >= smallest_share * total:
            categories[label] = row
        else:
            rest = {key: rest[key] + row.get(key, 1) for key in rest}
    return {
        "kernels": len(found),
        "bytes": sum(k.bytes for k in found),
        "hbm_bytes": sum(k.hbm_bytes for k in found),
        "cycles": sum(k.cycles for k in found),
        "order": order,
        "top": largest,
        "categories": categories,
        "other_categories": rest,
    }


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:9.1f}"


def format_summary(
    summary: dict[str, Any], cost: aot.Cost, header: str, memory: dict[str, int] | None = None
) -> str:
    """The report: top kernels, categories, the total against XLA's count (`cost`), the
    compiler's step estimate and `memory` (`aot.memory`) of the program read."""
    total = summary["bytes"] or 1
    cycles = summary["cycles"] or 1
    shares = lambda row: (
        f"{_mib(row['bytes'])} {100 * row['bytes'] / total:5.1f} {_mib(row['hbm_bytes'])} "
        f"{100 * row['cycles'] / cycles:6.1f}"
    )
    columns = f"{'MiB':>9s} {'%':>5s} {'HBM MiB':>9s} {'cyc %':>6s}"
    lines = [
        f"{header} ({LABEL})",
        f"{summary['kernels']} kernels; bytes = operands + output of each, per device; "
        "HBM = memory space 0 (the rest: on-chip, S(1) VMEM); cyc % = share of the compiler's "
        "per-kernel cycle estimates (`estimated_cycles`; Mosaic kernels and collectives have none)",
        "",
        f"top {len(summary['top'])} kernels by {summary['order']} (identical kernels, e.g. one "
        "per layer, as one row):",
        f"{columns} {'count':>5s}  {'kind':20s} {'output':36s} category",
    ]
    for row in summary["top"]:
        shape = row["shape"] if len(row["shape"]) <= 36 else row["shape"][:33] + "..."
        op_name = row["op_name"] if len(row["op_name"]) <= 100 else "..." + row["op_name"][-97:]
        lines.append(
            f"{shares(row)} {row['count']:5d}  {row['kind'][:20]:20s} {shape:36s} {row['category']}"
        )
        lines.append(f"{'':40s}{op_name or '(no op_name)'}")
    lines += [
        "",
        "by category (pass | tower | part; * a block under remat, traced without its tower):",
        f"{columns} {'kernels':>7s}  category",
    ]
    rest = summary["other_categories"]
    rows = list(summary["categories"].items())
    if rest["categories"]:
        rows.append((f"{rest['categories']} smaller categories", rest))
    for label, row in rows:
        lines.append(f"{shares(row)} {row['kernels']:7d}  {label}")
    lines.append("")
    lines.append(
        f"total: {size_text(summary['bytes'])} per device "
        f"({size_text(summary['hbm_bytes'])} of it in HBM)"
    )
    if cost.bytes_accessed:
        lines.append(
            f"XLA's cost_analysis bytes accessed: {size_text(cost.bytes_accessed)}; this sum is "
            f"{summary['bytes'] / cost.bytes_accessed:.0%} of it"
        )
    if summary["cycles"]:
        lines.append(f"the per-kernel cycle estimates sum to {summary['cycles']:,} cycles")
    if cost.estimated_s:
        lines.append(f"the TPU compiler's estimate of the step: {1000 * cost.estimated_s:.2f} ms")
    if memory:
        total = size_text(memory["total"])
        lines.append(f"XLA's memory estimate of this program: {total} per device")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_file("config", None, "Config file, e.g. configs/pretrain.py.")
    flags.DEFINE_string("topology", None, "v5e-8, v5p-8, v6e-8, ... (a TPU slice).")
    flags.DEFINE_integer("top", 25, "How many of the largest kernels to list.")
    flags.DEFINE_enum(
        "order", "bytes", list(ORDERS), "List the largest by bytes or by estimated cycles."
    )
    flags.DEFINE_string("json", "", "Also write the summary to this JSON file.")
    flags.DEFINE_string("save_hlo", "", "Also write the compiled program's HLO text here.")
    flags.mark_flags_as_required(["config", "topology"])
    cli.check_flags(
        topology=cli.Text(targets.tpu_name_problem),
        top=cli.Number(integer=True, at_least=1),
        json=cli.Path("new_file"),
        save_hlo=cli.Path("new_file"),
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config: ml_collections.ConfigDict = FLAGS.config.copy_and_resolve_references()
    config.model.scan_layers = False  # every layer in the program, as the cost analysis needs
    target = targets.parse(FLAGS.topology)
    devices = target.devices()
    mesh = config_checks.validated_mesh(config, devices)
    vocab, _ = aot.vocab_size(config)
    start = time.perf_counter()
    try:
        _, compiled, compile_s = aot.compile_step(config, mesh, vocab)
    except aot.OutOfMemoryError as error:
        print(f"out of memory on {FLAGS.topology}: {error}", file=sys.stderr)
        sys.exit(3)
    cost = aot.analyse_cost(compiled, "the compiled step (layers unrolled)")
    hlo = compiled.as_text() or ""
    summary = summarise(hlo, FLAGS.top, order=FLAGS.order)
    header = (
        f"{targets.describe(target)}: {_config_name()} at global batch "
        f"{config.train.batch_size}, layers unrolled, compiled in {compile_s:.0f} s"
    )
    memory = aot.memory(compiled)
    print(format_summary(summary, cost, header, memory))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if FLAGS.save_hlo:
        cli.write_whole(Path(FLAGS.save_hlo), hlo)
    if FLAGS.json:
        report = {
            "label": LABEL,
            "header": header,
            "bytes_accessed": cost.bytes_accessed,
            "estimated_step_s": cost.estimated_s,
            "memory": memory,
            **summary,
        }
        cli.write_whole(Path(FLAGS.json), json.dumps(report, indent=1))


def _config_name() -> str:
    given = [a for a in sys.argv[1:] if a.startswith("--config=")]
    return given[-1].removeprefix("--config=") if given else "?"


if __name__ == "__main__":
    define_flags()
    cli.run(main)
