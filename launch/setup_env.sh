#!/usr/bin/env bash
# Creates a Python >= 3.12 virtual environment with the project and the JAX build for an accelerator.
#
#   launch/setup_env.sh --accelerator=tpu|cuda12|cuda13|cpu [--venv=DIR] [--dry_run]
#
# Run from anywhere; installs requirements.txt, jax[<accelerator>] pinned to requirements.txt's jax
# version, and the project itself (editable, so `python -m focusclip_jax.main` works from the repo).
# A Python >= 3.12 is taken from $PYTHON, python3.12, python3.13 or python3; without one (TPU VM
# images ship 3.10), uv (from PyPI) creates the venv with a Python 3.12 it fetches.
#   --accelerator  which jax build: tpu (libtpu), cuda12 / cuda13 (CUDA wheels from PyPI), cpu
#   --venv         where the venv goes (default: <repo>/.venv)
#   --dry_run      print the commands instead of running them
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

UV_VERSION=0.13.8
accelerator=""
venv="$REPO_ROOT/.venv"
for arg in "$@"; do
  case $arg in
    --accelerator=*) accelerator=$(flag_value "$arg") ;;
    --venv=*) venv=$(flag_value "$arg") ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done
case $accelerator in
  tpu | cuda12 | cuda13 | cpu) ;;
  *) die "--accelerator must be tpu, cuda12, cuda13 or cpu (got '${accelerator}')" ;;
esac

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.12 python3.13 python3; do
    [[ -n $candidate ]] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      printf '%s' "$candidate"
      return 0
    fi
  done
  return 1
}

jax_version=$(pinned_version jax)
if [[ ! -x $venv/bin/python ]]; then
  if python=$(find_python); then
    run "$python" -m venv "$venv"
  else
    log "no Python >= 3.12 here: creating $venv with uv's Python 3.12"
    run python3 -m pip install --user --quiet "uv==$UV_VERSION"
    run python3 -m uv venv --seed --python 3.12 "$venv"
  fi
fi
run "$venv/bin/python" -m pip install --quiet --upgrade pip
# gcsfs: gs:// workdirs for the metrics and TensorBoard files (orbax reaches buckets by itself).
run "$venv/bin/python" -m pip install --quiet -r "$REPO_ROOT/requirements.txt" \
  "jax[$accelerator]==$jax_version" gcsfs
run "$venv/bin/python" -m pip install --quiet --no-deps -e "$REPO_ROOT"
run "$venv/bin/python" -c 'import jax; print("JAX", jax.__version__, jax.devices())'
