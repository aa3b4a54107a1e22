# shellcheck shell=bash
# Sourced by the launch scripts: a dry-run aware `run`, logging, flag helpers, pinned versions.
# With DRY_RUN=1, `run` prints each command (shell-quoted, ready to paste) instead of running it,
# so every script's --dry_run shows exactly what it would do and needs no gcloud, srun or GPU.

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
DRY_RUN=${DRY_RUN:-0}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# Quotes words for a POSIX shell; words made only of safe characters stay bare (readable output).
shell_quote() {
  local safe='^[A-Za-z0-9_@%+=:,./-]+$' word quoted=()
  for word in "$@"; do
    if [[ $word =~ $safe ]]; then
      quoted+=("$word")
    else
      quoted+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${quoted[*]}"
}

# Runs a command; in dry-run mode prints it as "+ <command>" on stdout instead.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(shell_quote "$@")"
  else
    log "+ $(shell_quote "$@")"
    "$@"
  fi
}

# Like `run`, but the command replaces this shell, so that signals (preemption) reach it directly.
run_exec() {
  if [[ $DRY_RUN == 1 ]]; then
    run "$@"
  else
    log "+ $(shell_quote "$@")"
    exec "$@"
  fi
}

# The value of a --name=value flag; an empty value is an error naming the flag.
flag_value() {
  local value=${1#*=}
  [[ $1 == *=* && -n $value ]] || die "${1%%=*} needs a value: ${1%%=*}=<value>"
  printf '%s' "$value"
}

require() {
  local name=$1 value=$2
  [[ -n $value ]] || die "--$name is required (see --help)"
}

# The version `name` is pinned to in requirements.txt (jax, jaxlib, ...).
pinned_version() {
  local version
  version=$(sed -n "s/^$1==\([^ #]*\).*/\1/p" "$REPO_ROOT/requirements.txt")
  [[ -n $version ]] || die "$REPO_ROOT/requirements.txt pins no version of $1 (expected $1==X)"
  printf '%s' "$version"
}

# Prints the usage block at the top of a script: its comment lines after the shebang.
usage() {
  sed -n '2,/^[^#]/{/^#/!d;s/^# \{0,1\}//;p}' "$1"
}
