#!/usr/bin/env bash
# GPU benchmarks and GPU-only correctness checks, in one run on a GPU machine (< 10 minutes).
#
#   bench/gpu_check.sh [--wheels=DIR] [--out=DIR] [--batch=N] [--steps=N] [--venv=DIR]
#   bench/gpu_check.sh --compile_only[=h100-1] [--out=DIR] [--batch=N]     (on a CPU host)
#
# Run from anywhere on a CUDA machine whose image has jax (CUDA plugin), flax, optax, orbax, torch,
# timm and transformers but not the rest of requirements.txt. Stages, each under its own `timeout`:
#   1. setup    a fresh venv that sees the image's packages (a .pth file), plus the wheels
#               brought along for what the image lacks: grain, array-record, ml_collections,
#               tensorboardX, portpicker, clu and its wrapt, simplejpeg (tensorflow-datasets is
#               imported only by the MPII/COCO/CUB readers, which the checks do not use). Fetch them on a machine
#               with PyPI, into the repo's .whl/:
#                 bench/gpu_check.sh --fetch_wheels
#   2. bench    ViT-B/16 + BERT-base at context 128, bf16: the JAX step (compile, step time, img/s,
#               MFU against the 989 TFLOP/s bf16 peak, peak memory) and the PyTorch reference on
#               the same card and batch, fp32 eager (the original) and tuned (bf16 autocast +
#               SDPA); then the same step compiled ahead of time for this GPU's kind by
#               focusclip_jax.aot, whose memory estimate the summary holds against the peak;
#               then the JAX step with its blocks scanned (the config unrolls them), timed
#   3. checks   bench-small (ViT-Ti/16 at 197 tokens + BERT-mini): bf16 vs fp32 loss and gradient
#               norm from the same weights and batch; cuDNN flash attention vs XLA attention (the
#               kernel alone, then the whole model's loss in bf16)
# and prints a summary table. Results (JSON, logs) go to --out (default: $OUT if set, else
# /tmp/gpu_check).
#
# --compile_only runs everything up to running a kernel, on a host without a GPU, in the Python
# of .venv-aot (`make aot-venv`; or $PYTHON): stage 2's and 3's steps compiled for the target
# (default h100-1) by the AOT tool, and stage 3's cuDNN attention found in its compiled program.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEEL_PINS=(grain==0.2.18 array-record==0.8.6 ml_collections==1.1.0 tensorboardX==2.6.5
  portpicker==1.6.0 clu==0.0.12 wrapt==2.5.2 simplejpeg==1.9.0)
wheels="$REPO_ROOT/.whl"
out="${OUT:-/tmp/gpu_check}"
venv=/tmp/gpu_check_venv
batch=64
steps=10
fetch=0
compile_only=""

for arg in "$@"; do
  case $arg in
    --wheels=*) wheels=${arg#*=} ;;
    --out=*) out=${arg#*=} ;;
    --batch=*) batch=${arg#*=} ;;
    --steps=*) steps=${arg#*=} ;;
    --venv=*) venv=${arg#*=} ;;
    --fetch_wheels) fetch=1 ;;
    --compile_only) compile_only=h100-1 ;;
    --compile_only=*) compile_only=${arg#*=} ;;
    -h | --help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

if ((fetch)); then
  # Python 3.12 manylinux wheels for the GPU image (pip needs each platform tag named).
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$wheels" "${WHEEL_PINS[@]}"
  echo "wheels in $wheels: copy them to the GPU machine beside this checkout"
  exit 0
fi

mkdir -p "$out"
cd "$REPO_ROOT"
log() { printf '\n== %s ==\n' "$*"; }

if [[ -n $compile_only ]]; then
  python=${PYTHON:-$REPO_ROOT/.venv-aot/bin/python}
  [[ -x $python ]] || { echo "no $python: run 'make aot-venv' or set PYTHON" >&2; exit 1; }
  status=0
  log "2. bench's step (B/16 + BERT-base, context 128, bf16, batch $batch) for $compile_only"
  timeout 900 "$python" -m focusclip_jax.aot --config=configs/bench.py:b16_128 \
    --topology="$compile_only" --config.model.dtype=bfloat16 --config.train.batch_size="$batch" \
    --xla_flops=none --json="$out/aot_b16_128.json" 2>&1 | tee "$out/aot_bench.log" || status=$?
  log "3. checks' step (bench-small, bf16, attention auto) for $compile_only"
  timeout 600 "$python" - "$compile_only" <<'EOF' 2>&1 | tee "$out/aot_checks.log" || status=$?
"""bench-small in bfloat16: cuDNN attention forward and backward at the ViT's 197 tokens."""
import sys

from focusclip_jax import targets

targets.configure_compile_only_environment()
from configs import bench  # noqa: E402
from focusclip_jax import aot, sharding  # noqa: E402

config = bench.get_config("small")
config.model.dtype = "bfloat16"
target = targets.parse(sys.argv[1])
mesh = sharding.create_mesh(config.mesh, devices=target.devices())
_, program, seconds = aot.compile_step(config, mesh, config.model.text.vocab_size)
hlo = program.as_text()
calls = {k: hlo.count(f'"__cudnn$fmha{k}"') for k in ("Softmax", "SoftmaxBackward")}
print(f"compiled in {seconds:.1f} s; cuDNN attention custom calls: {calls}")
sys.exit(0 if calls["Softmax"] and calls["SoftmaxBackward"] else 1)
EOF
  log "summary"
  echo "compile-only check for $compile_only: $( ((status == 0)) && echo passed || echo FAILED)"
  exit "$status"
fi

log "1. setup"
shopt -s nullglob
carried=("$wheels"/*.whl)
if ((${#carried[@]} == 0)); then
  echo "no wheels in $wheels: run 'bench/gpu_check.sh --fetch_wheels' where PyPI is reachable" >&2
  exit 1
fi
timeout 30 python3 -m venv "$venv"
# The image's packages (jax with CUDA, torch, ...) stay visible behind the venv's own, whether the
# image's python3 is a base interpreter or itself a venv (--system-site-packages sees only a base).
venv_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -c 'import site; print("\n".join(site.getsitepackages()))' >"$venv_site/gpu_image.pth"
timeout 60 "$venv/bin/python" -m pip install --quiet --no-index --no-deps --no-compile --ignore-installed \
  "${carried[@]}"
python="$venv/bin/python"
timeout 30 "$python" - <<'EOF'
import clu.metrics, grain, jax, ml_collections, tensorboardX, torch  # noqa: F401 (all must import)
print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, torch.cuda.is_available())
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

log "2. bench: B/16 + BERT-base, context 128, bf16, batch $batch"
status_bench=0
timeout 230 "$python" -m bench.compare --config=configs/bench.py:b16_128 \
  --config.model.dtype=bfloat16 --batch="$batch" --steps="$steps" --warmup=2 \
  --torch_python="$python" --torch_device=cuda --modes=original,tuned \
  --json="$out/bench_b16_128.json" 2>&1 | tee "$out/bench.log" | grep -v '^[IW][0-9]' ||
  status_bench=$?

# The AOT tool's estimate for this GPU's kind, to hold against the peak the bench measured.
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
case $gpu_name in
  *H200*) aot_target=h200-1 ;;
  *A100*) aot_target=a100-1 ;;
  *) aot_target=h100-1 ;;
esac
timeout 240 "$python" -m focusclip_jax.aot --config=configs/bench.py:b16_128 \
  --topology="$aot_target" --config.model.dtype=bfloat16 --config.train.batch_size="$batch" \
  --xla_flops=none --json="$out/aot_b16_128.json" >"$out/aot.log" 2>&1 ||
  echo "aot: no estimate for $aot_target (see aot.log)"

# The config unrolls its blocks, which the TPU compiler's estimate put first; GPUs have no such
# estimate, so the step with scanned blocks (and the remat for scans) is timed beside it.
rm -f "$out/bench_scanned.json"
timeout 150 "$python" -m bench.train_step --config=configs/bench.py:b16_128 \
  --config.model.dtype=bfloat16 --config.train.batch_size="$batch" \
  --config.model.scan_layers=True --config.model.remat=dots_with_no_batch_dims_saveable \
  --steps="$steps" --warmup=2 --json="$out/bench_scanned.json" >"$out/bench_scanned.log" 2>&1 ||
  echo "scanned blocks: no result (see bench_scanned.log)"

log "3. checks: bf16 vs fp32, cuDNN vs XLA attention"
status_checks=0
timeout 170 "$python" - "$out/checks.json" <<'EOF' 2>&1 | tee "$out/checks.log" || status_checks=$?
"""Same weights, same batch: the loss and gradient norm agree across dtypes and attention kernels."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bench.random_batch import random_batch
from configs import bench
from focusclip_jax import sharding, train
from input_pipeline import pipeline

on_gpu = jax.default_backend() == "gpu"
results = {}

# The kernel alone: [B, T, heads, head_dim] bf16, padded keys (prefix lengths), as BERT runs it.
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.standard_normal((8, 128, 12, 64)), jnp.bfloat16) for _ in range(3))
lengths = jnp.asarray(rng.integers(16, 129, 8), jnp.int32)
mask = (jnp.arange(128)[None, :] < lengths[:, None])[:, None, None, :]
reference = jax.nn.dot_product_attention(
    q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask=mask
)
xla = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
results["attention_xla_max_err"] = float(jnp.max(jnp.abs(xla - reference)))
if on_gpu:
    cudnn = jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
    )
    results["attention_cudnn_max_err"] = float(jnp.max(jnp.abs(cudnn - reference)))

# The whole step's loss and gradient norm from identical initial weights (same seed).
def first_step(dtype: str, attention: str) -> dict:
    config = bench.get_config("small" if on_gpu else "tiny")  # head dim 64: cuDNN applies
    config.train.batch_size = 16
    config.model.dtype = dtype
    config.model.attention = attention
    config.mesh.data = 1
    mesh = sharding.create_mesh(config.mesh)
    trainer = train.Trainer(config, mesh, vocab_size=config.model.text.vocab_size)
    batch = pipeline.to_global_arrays(random_batch(config), sharding.batch_sharding(mesh))
    _, metrics = trainer.step(trainer.init_state(), batch)
    return {k: float(metrics[k]) for k in ("loss", "grad_norm")}

runs = {"float32/xla": first_step("float32", "xla"), "bfloat16/xla": first_step("bfloat16", "xla")}
if on_gpu:
    runs["bfloat16/cudnn"] = first_step("bfloat16", "cudnn")
results["steps"] = runs
base = runs["float32/xla"]
ok = results["attention_xla_max_err"] < 2e-2 and results.get("attention_cudnn_max_err", 0) < 2e-2
for name, run in runs.items():
    rel = {k: abs(run[k] - base[k]) / abs(base[k]) for k in base}
    results[f"{name}_rel_diff"] = rel
    ok &= rel["loss"] < 1e-2 and rel["grad_norm"] < 5e-2
    print(f"{name:16s} loss {run['loss']:.5f} grad_norm {run['grad_norm']:.4f} "
          f"rel. diff to float32: loss {rel['loss']:.2e} grad_norm {rel['grad_norm']:.2e}")
print({k: v for k, v in results.items() if k.startswith("attention")})
results["ok"] = bool(ok)
json.dump(results, open(sys.argv[1], "w"), indent=1)
print("checks", "PASSED" if ok else "FAILED (loss within 1%, grad norm 5%, attention 2e-2)")
sys.exit(0 if ok else 1)
EOF

log "summary"
"$python" - "$out" <<'EOF'
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
bench_file = out / "bench_b16_128.json"
if bench_file.exists():
    results = json.loads(bench_file.read_text())
    jax_step = results[0]["step_s"]
    print("| framework | setting | step ms | img/s | MFU | JAX / this |")
    print("|---|---|--:|--:|--:|--:|")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        print(f"| {r['framework']} | {r['mode']} | {1000 * r['step_s']:.1f} "
              f"| {r.get('batch', results[0]['batch']) / r['step_s']:.1f} | {mfu} "
              f"| {jax_step / r['step_s']:.2f} |")
else:
    print("bench: no result (see bench.log)")
scanned_file = out / "bench_scanned.json"
if bench_file.exists() and scanned_file.exists():
    scanned = json.loads(scanned_file.read_text())
    mfu = f"{100 * scanned['mfu']:.1f}%" if scanned.get("mfu") else ""
    print(f"| jax | blocks scanned | {1000 * scanned['step_s']:.1f} "
          f"| {scanned['images_per_s']:.1f} | {mfu} | {jax_step / scanned['step_s']:.2f} |")
aot_file = out / "aot_b16_128.json"
if bench_file.exists() and aot_file.exists():
    measured = json.loads(bench_file.read_text())[0].get("peak_memory_bytes")
    estimate = json.loads(aot_file.read_text())["memory"]["total"]
    if measured:
        print(f"memory per GPU: AOT estimate {estimate / 2**30:.2f} GiB, measured peak "
              f"{measured / 2**30:.2f} GiB (estimate / measured {estimate / measured:.2f})")
checks_file = out / "checks.json"
if checks_file.exists():
    checks = json.loads(checks_file.read_text())
    print("checks:", "passed" if checks["ok"] else "FAILED", json.dumps(checks["steps"]))
else:
    print("checks: no result (see checks.log)")
EOF
exit $((status_bench || status_checks))
