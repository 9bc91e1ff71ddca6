# shellcheck shell=bash
# e2e/lib/common.sh — small shell helpers shared by the e2e scripts (sourced, never executed).
# Owned by e2e (cluster scripts). Keep it dependency-free: bash, coreutils.

# Repository root (the directory that holds e2e/).
# shellcheck disable=SC2034 # used by the scripts that source this
E2E_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

e2e_log()  { printf '%s %s\n' "[$(date +%H:%M:%S)] ${E2E_PROG:-e2e}:" "$*" >&2; }
e2e_die()  { printf '%s: error: %s\n' "${E2E_PROG:-e2e}" "$*" >&2; exit 1; }

# Prints the path of a usable `go`, preferring PATH, then /usr/local/go/bin/go.
e2e_find_go() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
  else return 1
  fi
}

# e2e_port_busy PORT — true when something listens on 127.0.0.1:PORT (or the wildcard address).
e2e_port_busy() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

# e2e_pid_alive PID — true when PID is a live (non-zombie) process.
e2e_pid_alive() {
  local pid="$1" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
  [[ "$state" != "Z" ]]
}

# e2e_with_progress WHAT CMD... — runs CMD; while it runs, prints "WHAT: still running (Ns)" to
# stderr every E2E_PROGRESS_EVERY seconds (default 30), so a long build is never silent; then
# "WHAT: done in Ns" (or "failed after Ns"). Returns CMD's exit status.
e2e_with_progress() {
  local what="$1" start=$SECONDS ticker status=0
  shift
  (
    trap 'exit 0' TERM
    while sleep "${E2E_PROGRESS_EVERY:-30}"; do e2e_log "$what: still running ($((SECONDS - start))s)"; done
  ) &
  ticker=$!
  "$@" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if ((status == 0)); then e2e_log "$what: done in $((SECONDS - start))s"; else e2e_log "$what: failed after $((SECONDS - start))s"; fi
  return "$status"
}
