#!/usr/bin/env bash
# A multi-process (multi-host style) run on this machine: N processes, each with fake CPU devices.
#
#   launch/local_multiprocess.sh --config=FILE[:variants] --workdir=DIR [--num_processes=2]
#       [--devices_per_process=4] [--port=PORT] [--log_dir=DIR] [--python=PY] [--command=CMD]
#       [--kill_after=30] [--dry_run] [-- <extra flags for every process>]
#
# Process i runs `python -m focusclip_jax.main --config=... --workdir=...
# --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i` with JAX_PLATFORMS=cpu,
# JAX_NUM_CPU_DEVICES=<devices_per_process> and JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo (the
# collectives between processes), i.e. what a pod or cluster does, on one machine: the way to test
# multi-host code paths (per-process data shards, global arrays, checkpoints) without one.
#   --port         the coordinator's port (default: a free one)
#   --log_dir      one log per process, process_<i>.log (default: <workdir>/logs, or a temp folder);
#                  process 0's log is also streamed here
#   --python       the interpreter (default: <repo>/.venv/bin/python, else python3)
#   --command=CMD  run CMD "$@" (the three distributed flags and the extra flags) in place of the
#                  trainer, e.g. to check the plumbing: --command='python -c "import sys; print(sys.argv)"'
#   --kill_after   seconds the others get to exit after one fails (SIGTERM), before SIGKILL
# Exit status: the first failing process's, else 0. If one process fails, the others are stopped.
# SIGINT/SIGTERM are forwarded to every process (the trainer checkpoints on SIGTERM and exits 0);
# a second signal kills them. Needs bash >= 5.1 and setsid (Linux).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

num_processes=2 devices_per_process=4 port="" log_dir="" python="" command="" kill_after=30
config="" workdir=""
extra=()
while (($#)); do
  case $1 in
    --config=*) config=$(flag_value "$1") ;;
    --workdir=*) workdir=$(flag_value "$1") ;;
    --num_processes=*) num_processes=$(flag_value "$1") ;;
    --devices_per_process=*) devices_per_process=$(flag_value "$1") ;;
    --port=*) port=$(flag_value "$1") ;;
    --log_dir=*) log_dir=$(flag_value "$1") ;;
    --python=*) python=$(flag_value "$1") ;;
    --command=*) command=$(flag_value "$1") ;;
    --kill_after=*) kill_after=$(flag_value "$1") ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
for name in num_processes devices_per_process kill_after; do
  [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "--$name must be a positive integer (got '${!name}')"
done
((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)) ||
  die "needs bash >= 5.1 (wait -n -p), this is $BASH_VERSION"
if [[ -z $command ]]; then
  require config "$config"
  require workdir "$workdir"
fi
if [[ -z $python ]]; then
  python=python3
  [[ ! -x $REPO_ROOT/.venv/bin/python ]] || python=$REPO_ROOT/.venv/bin/python
fi
if [[ -z $port ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
fi
if [[ -z $log_dir ]]; then
  if [[ -n $workdir ]]; then log_dir=$workdir/logs; else log_dir=$(mktemp -d); fi
fi

# The command line of process $1.
process_command() {
  local flags=(--coordinator_address="127.0.0.1:$port" --num_processes="$num_processes"
    --process_id="$1")
  local line=(env JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices_per_process"
    JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo PYTHONUNBUFFERED=1
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}")
  if [[ -n $command ]]; then
    line+=(bash -c "$command \"\$@\"" "process_$1" "${flags[@]}" "${extra[@]}")
  else
    line+=("$python" -m focusclip_jax.main --config="$config" --workdir="$workdir" "${extra[@]}"
      "${flags[@]}")
  fi
  printf '%s\0' "${line[@]}"
}

if [[ $DRY_RUN == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    mapfile -d '' line < <(process_command "$i")
    printf '+ %s > %s 2>&1 &\n' "$(shell_quote "${line[@]}")" "$(shell_quote "$log_dir/process_$i.log")"
  done
  echo "# then wait for all; if one fails, SIGTERM the others (SIGKILL after ${kill_after} s)"
  exit 0
fi

mkdir -p "$log_dir"
pids=() alive=() timer_pid="" signalled=0
declare -A process_of

# Signals every process's group (each runs in its own session: its children get it too).
signal_all() {
  local pid
  for pid in "${pids[@]}"; do kill -s "$1" -- "-$pid" 2>/dev/null || true; done
}

# shellcheck disable=SC2329 # invoked by the INT/TERM traps
forward() {
  if ((signalled)); then
    log "second signal: killing every process"
    signal_all KILL
  else
    signalled=1
    log "forwarding SIG$1 to every process (send it again to kill them)"
    signal_all "$1"
  fi
}

# shellcheck disable=SC2329 # invoked by the EXIT trap
clean_up() {
  [[ -z $timer_pid ]] || kill -- "-$timer_pid" 2>/dev/null || true
}

trap 'forward INT' INT
trap 'forward TERM' TERM
trap clean_up EXIT

for ((i = 0; i < num_processes; i++)); do
  mapfile -d '' line < <(process_command "$i")
  log "process $i: $(shell_quote "${line[@]}") > $log_dir/process_$i.log"
  setsid "${line[@]}" > "$log_dir/process_$i.log" 2>&1 < /dev/null &
  pids+=("$!")
  alive+=("$!")
  process_of[$!]=$i
done
# Stream process 0's log (the progress lines) until process 0 exits.
tail -n +1 -s 0.5 -F --pid="${pids[0]}" "$log_dir/process_0.log" 2>/dev/null &
tail_pid=$!

status=0
while ((${#alive[@]})); do
  wait -n -p finished "${alive[@]}" && code=0 || code=$?
  [[ -n ${finished:-} ]] || continue # a trapped signal interrupted the wait
  running=()
  for pid in "${alive[@]}"; do [[ $pid == "$finished" ]] || running+=("$pid"); done
  alive=("${running[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    i=${process_of[$finished]}
    log "process $i failed with status $code; stopping the others. Last lines of its log:"
    tail -n 20 "$log_dir/process_$i.log" >&2
    signal_all TERM
    # A process stuck in a collective with the failed one never reaches a step boundary.
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'sleep "$1"; shift; for pid; do kill -KILL -- "-$pid" 2>/dev/null; done' \
      kill_timer "$kill_after" "${pids[@]}" > /dev/null 2>&1 < /dev/null &
    timer_pid=$!
  fi
done
wait "$tail_pid" || true
log "all $num_processes processes done (status $status); logs in $log_dir"
exit "$status"
