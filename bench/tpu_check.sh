#!/usr/bin/env bash
# TPU benchmarks and TPU-only checks, in one run on a single-host Cloud TPU VM (v5e-8, v6e-8,
# v5p-8, v4-8, or smaller).
#
#   bench/tpu_check.sh [--out=DIR] [--batch=N] [--steps=N] [--venv=DIR] [--topology=v5e-8]
#   bench/tpu_check.sh --compile_only[=v5e-8] [--out=DIR] [--batch=N]     (on a CPU host)
#
# Run from anywhere on the TPU VM, with this checkout and PyPI at hand. Stages, each under its
# own `timeout`:
#   1. setup    a venv (--venv, default /tmp/tpu_check_venv; reused if there) by
#               `launch/setup_env.sh --accelerator=tpu`: requirements.txt, jax[tpu] at
#               requirements.txt's jax, the project (editable), then libtpu at
#               requirements-aot.txt's pin (the compiler of the PERFORMANCE.md estimates); the
#               chips JAX sees name the slice (v5e-8), unless --topology names it
#   2. bench    the paper's step (configs/pretrain.py's towers, recipe and batch layout, on random
#               batches: configs/bench.py:b16_512 with 8 people per image), batch --batch (32, the
#               paper's), data parallel over every chip, in the config's dtype (auto: bfloat16
#               with the whole-sequence `vmem` attention kernels in both towers, BERT's dropped
#               attention included), in
#               bfloat16 with XLA's attention (`xla`: what the kernels are measured against,
#               since the estimate leaves their hashing out), in bfloat16 with the optimiser
#               state replicated (`replicated`: `sharding.optimizer_state=params`, what its split
#               over the chips is measured against), with blocks scanned (`scanned`:
#               `model.scan_layers=True` with the remat for scans, what the config's unrolled
#               blocks were picked over by the estimate), and in float32. For each, first
#               the TPU compiler's estimate (focusclip_jax.aot, compile-only, in a process of
#               its own that holds no TPU), then the step measured on the chips by
#               bench.train_step (--steps timed steps after 2 warm-up ones)
#   3. checks   bench-small (ViT-Ti/16 + BERT-mini, batch 16): the first step's loss and gradient
#               norm from the same weights and batch in float32/XLA, bfloat16/XLA,
#               bfloat16/splash, bfloat16/vmem and float32/vmem attention agree, and the splash
#               and vmem programs hold their kernels; then the vmem kernels against XLA's
#               attention directly, outputs and gradients at ViT-B/16's unpadded 197 tokens
# and prints a summary: measured step time, img/s, MFU and peak memory beside the compiler's
# estimate of each. Results (JSON, logs) go to --out (default: $OUT if set, else /tmp/tpu_check).
# Exit status 0 when every stage passed, 1 otherwise, 2 for a bad argument.
#
# --compile_only runs stage 2's and 3's compiles on a host without a TPU, in the Python of
# .venv-aot (`make aot-venv`; or $PYTHON), for the target (default v5e-8): the estimates, and
# the splash and vmem attention kernels found in the programs that ask for them.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=../launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch/common.sh"  # REPO_ROOT, die, flag_value, usage
# The paper's step on random batches: configs/pretrain.py's model and batch shapes, no files.
STEP_CONFIG=(--config=configs/bench.py:b16_512 --config.data.max_people=8)
CHECKS_BATCH=16
out="${OUT:-/tmp/tpu_check}"
venv=/tmp/tpu_check_venv
batch=32
steps=10
topology=""
compile_only=""

for arg in "$@"; do
  case $arg in
    --out=*) out=$(flag_value "$arg") || exit 2 ;;
    --batch=*) batch=$(flag_value "$arg") || exit 2 ;;
    --steps=*) steps=$(flag_value "$arg") || exit 2 ;;
    --venv=*) venv=$(flag_value "$arg") || exit 2 ;;
    --topology=*) topology=$(flag_value "$arg") || exit 2 ;;
    --compile_only) compile_only=v5e-8 ;;
    --compile_only=*) compile_only=$(flag_value "$arg") || exit 2 ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$arg' (see bench/tpu_check.sh --help)" ;;
  esac
done
[[ $batch =~ ^[1-9][0-9]*$ ]] || die "--batch=$batch: expected a positive integer"
[[ $steps =~ ^[1-9][0-9]*$ ]] || die "--steps=$steps: expected a positive integer"

mkdir -p "$out"
out=$(realpath "$out")  # the paths stay those of the caller's directory
venv=$(realpath -m "$venv")
cd "$REPO_ROOT"
log() { printf '\n== %s ==\n' "$*"; }
# Stage 2's runs: the config's dtype and kernels, bfloat16 with XLA's attention, bfloat16 with
# the optimiser state replicated, float32.
RUNS=(auto xla replicated scanned float32)
run_flags() {
  case $1 in
    xla) echo --config.model.dtype=auto --config.model.attention=xla ;;
    replicated) echo --config.model.dtype=auto --config.sharding.optimizer_state=params ;;
    scanned) echo --config.model.dtype=auto --config.model.scan_layers=True \
      --config.model.remat=dots_with_no_batch_dims_saveable ;;
    *) echo --config.model.dtype="$1" ;;
  esac
}
# This run's results only: a stage that fails leaves no older file behind for the summary.
rm -f "$out"/{aot,bench}_{auto,xla,replicated,scanned,float32}.json "$out"/checks.json "$out"/aot_checks_{splash,vmem,xla}.json

# The TPU compiler's report on a step for the target: compile-only devices, no TPU held.
aot() {
  local name=$1
  shift
  # JAX_PLATFORMS=cpu whatever the VM's environment says: a compile-only process.
  JAX_PLATFORMS=cpu timeout 1200 "$python" -m focusclip_jax.aot --topology="$topology" "$@" \
    --json="$out/aot_$name.json" 2>&1 | tee "$out/aot_$name.log"
}

# The summary: each run's measurement beside the compiler's estimate, then the checks.
summary() {
  log "summary"
  "$python" - "$out" "$compile_only" <<'EOF'
import json
import pathlib
import sys

out, compile_only = pathlib.Path(sys.argv[1]), bool(sys.argv[2])


def load(name: str) -> dict:
    path = out / name
    return json.loads(path.read_text()) if path.exists() else {}


def cell(value: float | None, scale: float, digits: int, suffix: str = "") -> str:
    return "—" if value is None else f"{scale * value:.{digits}f}{suffix}"


GIB = 1 / 2**30
missing = []
print("| run | dtype | attention | step ms | estimate ms | measured / estimate | img/s "
      "| estimate img/s | MFU | estimate MFU | peak GiB | compiler's GiB |")
print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for run in ("auto", "xla", "replicated", "scanned", "float32"):
    measured, estimate = load(f"bench_{run}.json"), load(f"aot_{run}.json")
    step, estimated_step = measured.get("step_s"), estimate.get("estimated_step_s")
    ratio = step / estimated_step if step and estimated_step else None
    print(f"| {run} | {measured.get('dtype') or estimate.get('dtype', '—')} "
          f"| {estimate.get('attention', '—')} | {cell(step, 1e3, 1)} "
          f"| {cell(estimated_step, 1e3, 1)} | {cell(ratio, 1, 2)} "
          f"| {cell(measured.get('images_per_s'), 1, 1)} "
          f"| {cell(estimate.get('estimated_images_per_s'), 1, 1)} "
          f"| {cell(measured.get('mfu'), 100, 1, '%')} "
          f"| {cell(estimate.get('estimated_mfu'), 100, 1, '%')} "
          f"| {cell(measured.get('peak_memory_bytes'), GIB, 2)} "
          f"| {cell(estimate.get('memory', {}).get('total'), GIB, 2)} |")
    missing += [f"bench_{run}.log"] * (not measured and not compile_only)
    missing += [f"aot_{run}.log"] * (not estimate)
if missing:
    print("no result from", ", ".join(missing), "(see those logs)")
any_run = load("bench_auto.json") or load("bench_float32.json")
any_estimate = load("aot_auto.json") or load("aot_float32.json")
if any_run:
    print(f"measured on {any_run['devices']} x {any_run['device_kind']}, global batch "
          f"{any_run['batch']}, median of {any_run['steps']} steps; peak memory from "
          f"{any_run['memory_source']}")
if any_estimate:
    print(f"estimated for {any_estimate['target']}, global batch {any_estimate['batch']}; "
          f"the estimate is of {any_estimate['cost_analysis_of']}")
checks = load("checks.json")
if checks:
    for name, run in checks["steps"].items():
        print(f"checks {name:16s} loss {run['loss']:.5f} grad_norm {run['grad_norm']:.4f} "
              f"attention {run['attention']}")
    print("checks:", "passed" if checks["ok"] else "FAILED")
for kernel in ("splash", "vmem", "xla"):
    compiled = load(f"aot_checks_{kernel}.json")
    if compiled:
        print(f"checks' step with model.attention={kernel}: attention {compiled['attention']}")
EOF
}

if [[ -n $compile_only ]]; then
  python=${PYTHON:-$REPO_ROOT/.venv-aot/bin/python}
  [[ -x $python ]] || { echo "no $python: run 'make aot-venv' or set PYTHON" >&2; exit 1; }
  topology=${topology:-$compile_only}
  status=0
  # Found in a report: "attention" names the kernel the compiled program runs.
  expect_attention() {
    local file=$1 expected=$2 found
    found=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["attention"])' \
      "$file" 2>/dev/null || echo "no report")
    if [[ $found == "$expected"* ]]; then
      echo "ok: $file: attention $found"
    else
      echo "FAILED: $file: attention $found, expected $expected"
      status=1
    fi
  }
  log "2. bench's step (the paper's, batch $batch) for $topology: the config's, XLA's attention, float32"
  for run in "${RUNS[@]}"; do
    # shellcheck disable=SC2046  # run_flags prints separate flags
    aot "$run" "${STEP_CONFIG[@]}" --config.train.batch_size="$batch" $(run_flags "$run") ||
      status=$?
  done
  expect_attention "$out/aot_auto.json" vmem
  log "3. checks' step (bench-small, bfloat16, batch $CHECKS_BATCH), splash, vmem and XLA attention"
  for kernel in splash vmem xla; do
    aot "checks_$kernel" --config=configs/bench.py:small --config.model.dtype=bfloat16 \
      --config.model.attention="$kernel" --config.train.batch_size="$CHECKS_BATCH" \
      --xla_flops=none || status=$?
    expect_attention "$out/aot_checks_$kernel.json" "$kernel"
  done
  summary
  echo "compile-only check for $topology: $( ((status == 0)) && echo passed || echo FAILED)"
  exit "$status"
fi

log "1. setup"
libtpu=$(sed -n 's/^libtpu==\([^ #]*\).*/\1/p' requirements-aot.txt)
python="$venv/bin/python"
{
  timeout 1200 launch/setup_env.sh --accelerator=tpu --venv="$venv" &&
    timeout 300 "$python" -m pip install --quiet "libtpu==$libtpu"
} 2>&1 | tee "$out/setup.log" || { echo "setup failed: $out/setup.log" >&2; exit 1; }
# The slice from the chips JAX sees (one megacore device per v4/v5p chip, whose names count
# TensorCores); this process exits before anything else starts.
found=$(timeout 300 "$python" - <<'EOF' 2>>"$out/setup.log"
import sys
from importlib import metadata

import jax

from focusclip_jax import targets

devices = jax.devices()
kind = devices[0].device_kind
print(f"jax {jax.__version__}, libtpu {metadata.version('libtpu')}: {len(devices)} x {kind}")
chip = targets.chip_for_device_kind(kind)
name = next((n for n, c in targets.TPUS.items() if c is chip), None)
if jax.default_backend() != "tpu" or name is None:
    print(f"no known TPU here (JAX sees {kind}): run on a TPU VM, or --compile_only", file=sys.stderr)
    sys.exit(1)
print(f"{name}-{len(devices) * (2 if chip.megacore else 1)}")
EOF
) || { tail -n 3 "$out/setup.log"; echo "setup failed: $out/setup.log" >&2; exit 1; }
echo "$found"
detected=${found##*$'\n'}
topology=${topology:-$detected}
echo "compiling for $topology (the chips present: $detected)"

log "2. bench: the paper's step, batch $batch, on $topology"
status=0
# The estimates first, while no process holds the chips; then the measurements.
for run in "${RUNS[@]}"; do
  echo "-- $run: the TPU compiler's estimate (aot_$run.log)"
  # shellcheck disable=SC2046  # run_flags prints separate flags
  aot "$run" "${STEP_CONFIG[@]}" --config.train.batch_size="$batch" $(run_flags "$run") ||
    status=$?
done
for run in "${RUNS[@]}"; do
  echo "-- $run: measured (bench_$run.log)"
  # shellcheck disable=SC2046  # run_flags prints separate flags
  timeout 900 "$python" -m bench.train_step "${STEP_CONFIG[@]}" \
    --config.train.batch_size="$batch" $(run_flags "$run") --steps="$steps" --warmup=2 \
    --xla_cost=none --json="$out/bench_$run.json" 2>&1 | tee "$out/bench_$run.log" |
    grep -v '^[IW][0-9]' || status=$?
done

log "3. checks: splash and vmem vs XLA attention, bf16 vs fp32 (bench-small); vmem vs XLA directly"
timeout 900 "$python" - "$out/checks.json" "$CHECKS_BATCH" <<'EOF' 2>&1 | tee "$out/checks.log" || status=$?
"""Same weights, same batch: the loss and gradient norm agree across dtypes and attention kernels,
and the splash and vmem programs run their kernels (with splash, BERT's attention, which drops
probabilities in training, runs the vmem kernels beside them). Then the vmem kernels against
XLA's attention directly: outputs and gradients at 197 tokens, a length no tile divides."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bench.random_batch import random_batch
from configs import bench
from focusclip_jax import aot, sharding, train
from focusclip_jax.models import layers
from input_pipeline import pipeline

on_tpu = jax.default_backend() == "tpu"


def first_step(dtype: str, attention: str) -> dict:
    config = bench.get_config("small" if on_tpu else "tiny")  # off a TPU, splash is interpreted
    config.train.batch_size = int(sys.argv[2])
    config.model.dtype = dtype
    config.model.attention = attention
    mesh = sharding.create_mesh(config.mesh)
    trainer = train.Trainer(config, mesh, vocab_size=config.model.text.vocab_size)
    batch = pipeline.to_global_arrays(random_batch(config), sharding.batch_sharding(mesh))
    state = trainer.init_state()
    step = trainer.step.lower(state, batch).compile()
    _, metrics = step(state, batch)
    run = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
    return run | {"attention": aot.attention_kernels(step.as_text())}


def vmem_against_xla() -> float:
    """The largest difference of the vmem kernels' output and q, k, v gradients from XLA's
    attention (float32, 8 sequences of 197 tokens, 3 heads of 64, the second half of the keys
    of every other sequence masked), relative to the largest value of each."""
    rng = np.random.default_rng(0)
    q, k, v, direction = (jnp.asarray(rng.normal(size=(8, 197, 3, 64)), jnp.float32)
                          for _ in range(4))
    mask = jnp.asarray(np.arange(197)[None, :] < np.where(np.arange(8) % 2, 98, 197)[:, None])
    mesh = sharding.create_mesh({"data": -1})

    def vmem(q, k, v):
        return layers._vmem_attention(q, k, v, mask, False)

    def xla(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])

    def outputs(attention, q, k, v):
        objective = lambda q, k, v: jnp.sum(attention(q, k, v) * direction)
        grads = jax.grad(objective, argnums=(0, 1, 2))(q, k, v)
        return [attention(q, k, v), *grads]

    on_mesh = sharding.traced_on(mesh, lambda q, k, v: outputs(vmem, q, k, v))
    got = jax.jit(on_mesh, in_shardings=sharding.replicated(mesh))(q, k, v)
    want = jax.jit(lambda q, k, v: outputs(xla, q, k, v))(q, k, v)
    got, want = jax.device_get((got, want))
    return max(float(np.max(np.abs(g - w)) / np.max(np.abs(w))) for g, w in zip(got, want))


runs = {
    "float32/xla": first_step("float32", "xla"),
    "bfloat16/xla": first_step("bfloat16", "xla"),
    "bfloat16/splash": first_step("bfloat16", "splash"),
    "bfloat16/vmem": first_step("bfloat16", "vmem"),
    "float32/vmem": first_step("float32", "vmem"),
}
pairs = [("bfloat16/xla", "float32/xla"), ("bfloat16/splash", "float32/xla"),
         ("bfloat16/splash", "bfloat16/xla"), ("bfloat16/vmem", "bfloat16/xla"),
         ("float32/vmem", "float32/xla")]
ok = not on_tpu or runs["bfloat16/splash"]["attention"].startswith("splash")
ok &= not on_tpu or runs["bfloat16/vmem"]["attention"].startswith("vmem")
ok &= runs["bfloat16/xla"]["attention"] == "xla"
results = {"steps": runs}
vmem_error = vmem_against_xla()
results["vmem vs xla, largest relative difference"] = vmem_error
ok &= vmem_error < 2e-2
print(f"vmem vs XLA attention (float32, 197 tokens): largest relative difference {vmem_error:.2e}")
for name, base in pairs:
    rel = {k: abs(runs[name][k] - runs[base][k]) / abs(runs[base][k]) for k in ("loss", "grad_norm")}
    results[f"{name} vs {base}"] = rel
    ok &= rel["loss"] < 1e-2 and rel["grad_norm"] < 5e-2
    print(f"{name:16s} vs {base:13s} rel. diff: loss {rel['loss']:.2e} "
          f"grad_norm {rel['grad_norm']:.2e}")
for name, run in runs.items():
    print(f"{name:16s} loss {run['loss']:.5f} grad_norm {run['grad_norm']:.4f} "
          f"attention {run['attention']}")
results["ok"] = bool(ok)
json.dump(results, open(sys.argv[1], "w"), indent=1)
print("checks", "PASSED" if ok else "FAILED (loss within 1%, grad norm 5%, the kernels run, "
      "vmem within 2% of XLA's attention)")
sys.exit(0 if ok else 1)
EOF

summary
exit $((status != 0))
