"""The house's rooms: no module imports one of a layer above it, and no import circle.

Read from the source with `ast` (every import statement, those inside functions too), so a new
module is checked the day it lands: it must belong to a layer below.
"""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("input_pipeline", "synthpose", "focusclip_jax", "configs", "bench")
# Lowest first. A module may import its own layer's modules and those below; a module belongs to
# the first layer that names it or a package above it.
LAYERS = (
    ("input_pipeline.errors", "input_pipeline.skeleton"),
    ("input_pipeline.cli", "input_pipeline.records", "input_pipeline.heatmaps"),
    ("input_pipeline.device_crop",),
    ("input_pipeline.writer_lock",),
    ("input_pipeline.tokenizers", "input_pipeline.transforms", "input_pipeline.benchmarks.readers"),
    ("synthpose.describe",),
    ("synthpose.scenes",),
    ("input_pipeline.sources",),
    ("input_pipeline.pipeline", "input_pipeline.benchmarks.registry"),
    ("input_pipeline.prepare.mpii", "input_pipeline.prepare.shards"),
    ("input_pipeline.prepare",),  # its programs
    ("focusclip_jax.sharding", "focusclip_jax.targets", "focusclip_jax.workdir_lock"),
    ("focusclip_jax.models", "focusclip_jax.optim", "focusclip_jax.weights", "focusclip_jax.logs"),
    ("focusclip_jax.losses", "focusclip_jax.config_checks", "focusclip_jax.run_record"),
    ("focusclip_jax.flops", "focusclip_jax.checkpoint"),
    ("focusclip_jax.setup",),
    ("focusclip_jax.evaluators",),
    ("focusclip_jax.train",),
    ("focusclip_jax",),  # the programs (main, evaluate, predict, export, aot, plot) and the API
    ("configs",),
    ("bench",),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (`from a.b import c` is a.b.c when that is a module)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in modules else node.module for n in names]
        else:
            continue
        imported |= {name for name in names if name in modules}
    return imported


def _layer(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in layer):
            return index
    raise AssertionError(f"{module} belongs to no layer of tests/test_layers.py: place it there")


def test_no_module_imports_a_layer_above_it_and_there_is_no_circle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    upward = [
        f"{name} (layer {_layer(name)}) imports {other} (layer {_layer(other)})"
        for name, imported in sorted(graph.items())
        for other in sorted(imported)
        if _layer(other) > _layer(name) and not name.startswith(other + ".")
    ]
    assert not upward, "\n".join(upward)
    # A package imports its own modules (its __init__ re-exporting, a registry): the circle
    # package → module → package is a package's, not a module's. Any other circle is reported.
    circles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if name.startswith(other + "."):
                continue  # a module importing its own package (its registry or base)
            if state.get(other) == 1:
                circles.append(" → ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_the_layers_name_only_modules_that_exist() -> None:
    modules = _modules()
    for layer in LAYERS:
        for name in layer:
            assert name in modules, f"tests/test_layers.py names {name}, which does not exist"
