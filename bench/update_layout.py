"""The TPU compiler's estimate of an Adam update over separate parameter arrays against the same
update over one concatenated array: what a flat optimiser state would save in that estimate.

    python -m bench.update_layout [--topology=v5e-1] [--shapes=768x256:40,768x3072:20,3072:200]

Each `--shapes` entry `<shape>:<count>` compiles, for one device of `--topology` (in the Python
of `.venv-aot`, libtpu's compile-only devices), AdamW's elementwise update of `count` parameters
of that shape (parameters, both moments and the gradient in float32; the parameters and moments
donated, as the training step donates its state) written two ways: one update per array, and one
update of a single array holding them all. It prints the compiler's estimated time (read as
`focusclip_jax.aot.tpu_time_estimate` reads it), XLA's bytes accessed and the scheduler's
copy-starts of each, and the least bytes the update can move (7 arrays' worth: four read, three
written). These are the compiler's estimates, not measurements.
"""

import math

from focusclip_jax import targets

if __name__ == "__main__":
    targets.configure_compile_only_environment()  # before JAX starts

import jax
import jax.numpy as jnp
from absl import app, flags

from focusclip_jax import aot
from input_pipeline import cli

flags.DEFINE_string("topology", "v5e-1", "A TPU slice whose first device compiles the updates.")
flags.DEFINE_list(
    "shapes", ["768x256:40", "768x3072:20", "3072:200"], "<dims joined by x>:<how many arrays>"
)
FLAGS = flags.FLAGS


def parse_shape(entry: str) -> tuple[tuple[int, ...], int] | None:
    """A `--shapes` entry as (shape, count); None when it is not one."""
    dims, _, count = entry.partition(":")
    try:
        shape, number = tuple(int(d) for d in dims.split("x")), int(count)
    except ValueError:
        return None
    return (shape, number) if min(shape) >= 1 and number >= 1 else None


def _shape_problem(entry: str) -> str | None:
    if parse_shape(entry) is None:
        return f"{entry!r}: expected <dims joined by x>:<count>, e.g. 768x256:40"
    return None


cli.check_flags(topology=cli.Text(targets.tpu_name_problem), shapes=cli.Text(_shape_problem))


def adam(param, mu, nu, grad):
    """AdamW's elementwise update (bias correction folded into the constants)."""
    mu = 0.9 * mu + 0.1 * grad
    nu = 0.999 * nu + 0.001 * grad * grad
    return param - 1e-3 * (mu / (jnp.sqrt(nu) + 1e-8) + 1e-4 * param), mu, nu


def separate(*arrays):
    """One update per parameter: arrays are (params..., mus..., nus..., grads...)."""
    count = len(arrays) // 4
    return [adam(*arrays[i::count]) for i in range(count)]


def estimate(function, shapes: list[tuple[int, ...]], donated: int, topology: str) -> dict:
    """The compiled program's estimated seconds, bytes accessed and scheduler copy-starts."""
    device = targets.parse(topology).devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding) for s in shapes]
    compiled = jax.jit(function, donate_argnums=tuple(range(donated))).lower(*args).compile()
    cost = aot.analyse_cost(compiled, "the update")
    return {
        "seconds": cost.estimated_s,
        "bytes": cost.bytes_accessed,
        "copy_starts": compiled.as_text().count("copy-start("),
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(f"AdamW's update on one device of {FLAGS.topology}, float32 (the compiler's estimates)")
    print("| arrays | layout | est. ms | GB accessed | least GB | copy-starts |")
    print("|---|---|--:|--:|--:|--:|")
    for shape, count in map(parse_shape, FLAGS.shapes):
        least = 7 * count * math.prod(shape) * 4
        one = (count * shape[0], *shape[1:])
        runs = {
            "separate": estimate(separate, [shape] * 4 * count, 3 * count, FLAGS.topology),
            "one array": estimate(adam, [one] * 4, 3, FLAGS.topology),
        }
        for layout, run in runs.items():
            ms = "—" if run["seconds"] is None else f"{run['seconds'] * 1e3:.3f}"
            print(
                f"| {count} x {list(shape)} | {layout} | {ms} | {run['bytes'] / 1e9:.3f} "
                f"| {least / 1e9:.3f} | {run['copy_starts']} |"
            )


if __name__ == "__main__":
    cli.run(main)
