#!/usr/bin/env bash
# Train on one machine with one or more GPUs: one process that sees all local GPUs.
#
#   launch/gpu_single_node.sh --config=FILE[:variants] --workdir=DIR [--install] [--cuda=12|13]
#       [--venv=DIR] [--dry_run] [-- <extra main.py flags>]
#
#   --install   first create/update the venv: requirements.txt + jax[cuda12] (or cuda13) pinned to
#               requirements.txt's jax version (CUDA and cuDNN come as PyPI wheels; only the
#               NVIDIA driver must be installed)
#   --venv=DIR  default <repo>/.venv
# One process drives every visible GPU (CUDA_VISIBLE_DEVICES picks them); the mesh in the config
# (`mesh.data`, `mesh.fsdp`, one of them -1) spreads over them. No jax.distributed is needed.
# Environment set (your own XLA_FLAGS / memory settings are kept and come last, so they win):
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.90  JAX preallocates this share of each GPU's memory
#       (default 0.75); training is the only user of the GPUs, so give it more room
#   --xla_gpu_enable_latency_hiding_scheduler=true  schedules the FSDP all-gathers and gradient
#       reduce-scatters to overlap with compute instead of running them back to back
#   --xla_gpu_enable_highest_priority_async_stream=true  runs those collectives on a
#       high-priority stream so that the overlap actually happens
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GPU_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_highest_priority_async_stream=true"

config="" workdir="" venv="$REPO_ROOT/.venv" install=0 cuda=12
extra=()
while (($#)); do
  case $1 in
    --config=*) config=$(flag_value "$1") ;;
    --workdir=*) workdir=$(flag_value "$1") ;;
    --venv=*) venv=$(flag_value "$1") ;;
    --install) install=1 ;;
    --cuda=*) cuda=$(flag_value "$1") ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
require config "$config"
require workdir "$workdir"
[[ $cuda == 12 || $cuda == 13 ]] || die "--cuda must be 12 or 13 (got $cuda)"

if [[ $install == 1 ]]; then
  dry=()
  [[ $DRY_RUN == 0 ]] || dry=(--dry_run)
  bash "$LAUNCH_DIR/setup_env.sh" --accelerator="cuda$cuda" --venv="$venv" "${dry[@]}"
fi
[[ $DRY_RUN == 1 || -x $venv/bin/python ]] ||
  die "$venv/bin/python not found: add --install (or run launch/setup_env.sh --accelerator=cuda$cuda)"

run_exec env XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}" \
  XLA_FLAGS="$GPU_XLA_FLAGS${XLA_FLAGS:+ $XLA_FLAGS}" PYTHONUNBUFFERED=1 \
  PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  "$venv/bin/python" -m focusclip_jax.main --config="$config" --workdir="$workdir" "${extra[@]}"
