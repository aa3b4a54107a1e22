#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or a pod slice): create, set up, run, stream logs, delete.
#
#   launch/tpu_vm.sh SUBCOMMAND... --name=NAME --zone=ZONE [flags] [-- <extra main.py flags>]
#
# Subcommands (several run in order, e.g. `create setup run`):
#   create  a TPU VM (or, with --queued, a queued resource, waiting until it is ACTIVE)
#   setup   copy this checkout (or git-clone --git_url) to every worker and install it there
#           (launch/setup_env.sh --accelerator=tpu: a Python 3.12 venv, requirements.txt and
#           jax[tpu] pinned to requirements.txt's jax version)
#   run     start `python -m focusclip_jax.main --config=... --workdir=... --distributed` on ALL
#           workers (nohup; log per worker: ~/focusclip_jax/logs/train-<hostname>.log)
#   logs    stream one worker's log (--log_worker, default 0) until its trainer exits
#   stop    SIGTERM the trainers: each saves a checkpoint at the next step and exits; `run` resumes
#   delete  delete the TPU VM (or the queued resource and its VM)
#   all     create, setup, run, logs, then delete (unless --keep). Checkpoints and metrics are in
#           the gs:// workdir; the per-worker logs go with the VM.
# Flags:
#   --name=NAME               TPU VM name (required)
#   --zone=ZONE               e.g. us-central2-b (required)
#   --project=PROJECT         default: gcloud's configured project
#   --accelerator_type=TYPE   e.g. v4-32, v5litepod-16, v6e-8 (default: v4-8)
#   --runtime_version=VER     default from the accelerator: v4 tpu-ubuntu2204-base,
#                             v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --spot | --preemptible    cheaper, preemptible capacity (--preemptible: not with --queued)
#   --queued                  create through a queued resource (waits for capacity)
#   --config=FILE[:variants]  training config, relative to the repo (required by run)
#   --workdir=gs://BUCKET/DIR shared by all workers (required by run; the VM's service account
#                             needs write access)
#   --git_url=URL [--git_ref=REF]  setup clones this instead of copying the local checkout
#   --data_from=gs://BUCKET/data   setup also syncs this folder into every worker's
#                             ~/focusclip_jax/data/ (the configs' default data root: the prepared
#                             MPII TFDS dataset in mpii/prepared/, vocabularies, tower weights;
#                             or leave the dataset in the bucket: --config.data.prepared=gs://...)
#   --log_worker=N|all        which worker's log `logs` streams (default 0: process 0 prints)
#   --keep                    `all` leaves the VM running at the end
#   --dry_run                 print every command instead of running it (no gcloud needed)
# JAX for TPU alone: pip install -r requirements.txt "jax[tpu]==<jax version in requirements.txt>"
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REMOTE_REPO=focusclip_jax # relative to the remote home directory, where ssh commands start
REMOTE_VENV=focusclip_venv

subcommands=()
name="" zone="" project="" accelerator_type=v4-8 runtime_version="" capacity="" queued=0
config="" workdir="" git_url="" git_ref="" data_from="" log_worker=0 keep=0
extra=()
while (($#)); do
  case $1 in
    create | setup | run | logs | stop | delete | all) subcommands+=("$1") ;;
    --name=*) name=$(flag_value "$1") ;;
    --zone=*) zone=$(flag_value "$1") ;;
    --project=*) project=$(flag_value "$1") ;;
    --accelerator_type=*) accelerator_type=$(flag_value "$1") ;;
    --runtime_version=*) runtime_version=$(flag_value "$1") ;;
    --spot) capacity=--spot ;;
    --preemptible) capacity=--preemptible ;;
    --queued) queued=1 ;;
    --config=*) config=$(flag_value "$1") ;;
    --workdir=*) workdir=$(flag_value "$1") ;;
    --git_url=*) git_url=$(flag_value "$1") ;;
    --git_ref=*) git_ref=$(flag_value "$1") ;;
    --data_from=*) data_from=$(flag_value "$1") ;;
    --log_worker=*) log_worker=$(flag_value "$1") ;;
    --keep) keep=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
((${#subcommands[@]})) || die "give a subcommand: create, setup, run, logs, stop, delete or all"
require name "$name"
require zone "$zone"
if [[ -z $runtime_version ]]; then
  case $accelerator_type in
    v4-*) runtime_version=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) runtime_version=v2-alpha-tpuv5-lite ;;
    v5p-*) runtime_version=v2-alpha-tpuv5 ;;
    v6e-*) runtime_version=v2-alpha-tpuv6e ;;
    *) die "no default runtime for --accelerator_type=$accelerator_type: give --runtime_version" ;;
  esac
fi
[[ $queued == 0 || $capacity != --preemptible ]] ||
  die "--preemptible is not available for queued resources: use --spot"

scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
queued_resource="$name-qr"

# Runs a shell command line on the given worker(s) of the TPU VM.
on_workers() {
  local workers=$1 command=$2
  run gcloud compute tpus tpu-vm ssh "$name" "${scope[@]}" --worker="$workers" --command="$command"
}

create() {
  if [[ $queued == 1 ]]; then
    run gcloud compute tpus queued-resources create "$queued_resource" "${scope[@]}" \
      --node-id="$name" --accelerator-type="$accelerator_type" \
      --runtime-version="$runtime_version" ${capacity:+"$capacity"}
    wait_until_active
  else
    run gcloud compute tpus tpu-vm create "$name" "${scope[@]}" \
      --accelerator-type="$accelerator_type" --version="$runtime_version" ${capacity:+"$capacity"}
  fi
}

wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "$queued_resource" "${scope[@]}"
    --format='value(state.state)')
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s  # repeated every 60 s until ACTIVE\n' "$(shell_quote "${describe[@]}")"
    return
  fi
  local state
  while state=$("${describe[@]}") && [[ $state != ACTIVE ]]; do
    [[ $state != FAILED && $state != SUSPENDED ]] || die "queued resource $queued_resource is $state"
    log "queued resource $queued_resource is ${state:-not yet listed}; waiting for capacity"
    sleep 60
  done
}

setup() {
  local fetch
  if [[ -n $git_url ]]; then
    fetch="rm -rf $REMOTE_REPO && git clone --quiet $(shell_quote "$git_url") $REMOTE_REPO"
    [[ -z $git_ref ]] || fetch+=" && git -C $REMOTE_REPO checkout --quiet $(shell_quote "$git_ref")"
  else
    # The tracked and untracked-but-not-ignored files: no .venv, workdirs or data.
    local archive=/tmp/$REMOTE_REPO-$name.tar.gz
    if [[ $DRY_RUN == 1 ]]; then
      printf '+ %s\n' "git -C $(shell_quote "$REPO_ROOT") ls-files -z --cached --others \
--exclude-standard | tar -C $(shell_quote "$REPO_ROOT") --null -T - -czf $archive"
    else
      git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard |
        tar -C "$REPO_ROOT" --null -T - -czf "$archive"
    fi
    run gcloud compute tpus tpu-vm scp "$archive" "$name:$REMOTE_REPO.tar.gz" "${scope[@]}" \
      --worker=all
    fetch="rm -rf $REMOTE_REPO && mkdir $REMOTE_REPO && tar -xzf $REMOTE_REPO.tar.gz -C $REMOTE_REPO"
  fi
  if [[ -n $data_from ]]; then
    fetch+=" && gcloud storage rsync --recursive $(shell_quote "$data_from") $REMOTE_REPO/data"
  fi
  on_workers all "set -e; $fetch && bash $REMOTE_REPO/launch/setup_env.sh --accelerator=tpu \
--venv=\$HOME/$REMOTE_VENV"
}

start_training() {
  require config "$config"
  require workdir "$workdir"
  [[ $workdir == gs://* ]] ||
    log "warning: --workdir=$workdir is not gs://: every worker must see the same directory"
  local train
  train=$(shell_quote "../$REMOTE_VENV/bin/python" -m focusclip_jax.main --config="$config" \
    --workdir="$workdir" --distributed "${extra[@]}")
  on_workers all "set -e; cd $REMOTE_REPO; mkdir -p logs; PYTHONUNBUFFERED=1 nohup $train \
> logs/train-\$(hostname).log 2>&1 < /dev/null & echo \$! > logs/train.pid"
}

stream_logs() {
  on_workers "$log_worker" "cd $REMOTE_REPO && tail -n +1 --pid=\"\$(cat logs/train.pid)\" \
-F logs/train-*.log"
}

stop_training() {
  on_workers all "kill -TERM \"\$(cat $REMOTE_REPO/logs/train.pid)\""
}

delete() {
  if [[ $queued == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$queued_resource" "${scope[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${scope[@]}" --quiet
  fi
}

for subcommand in "${subcommands[@]}"; do
  case $subcommand in
    create) create ;;
    setup) setup ;;
    run) start_training ;;
    logs) stream_logs ;;
    stop) stop_training ;;
    delete) delete ;;
    all)
      trap '[[ $finished == 1 ]] || log "stopped early; the TPU VM may still be up: \
$0 delete --name=$name --zone=$zone"' EXIT
      finished=0
      create
      setup
      start_training
      stream_logs
      if [[ $keep == 0 ]]; then delete; fi
      finished=1
      ;;
  esac
done
