# shellcheck shell=bash
# e2e/cluster.d/process.sh — the cluster's components as host processes: start one detached with its
# log and pid file, find it again by pid file and binary, stop it (TERM, then KILL), stop them all in
# reverse start order, wait for a readiness check while watching that the component still runs, and
# refuse busy ports. Sourced by e2e/cluster.

# Binary basename a component runs as (checked against /proc/<pid>/exe before signalling).
component_binary() {
  case "$1" in
    hostpath-permissions) basename "$(readlink -f "$PYTHON")" ;;
    *) echo "$1" ;;
  esac
}

# pid_of NAME — prints the recorded pid if that process is alive and runs NAME's binary.
pid_of() {
  local name="$1" file="$PIDS/$1.pid" pid exe
  [[ -f "$file" ]] || return 1
  pid="$(head -n1 "$file" 2>/dev/null || true)"
  e2e_pid_alive "$pid" || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  exe="${exe% (deleted)}"
  [[ "$(basename "$exe")" == "$(component_binary "$name")" ]] || return 1
  echo "$pid"
}

# start_component NAME CMD... — runs CMD detached (own session, so a Ctrl-C of `up` does not reach
# it), stdout+stderr to logs/NAME.log, no HTTP proxy variables; records its pid in pids/NAME.pid.
start_component() {
  local name="$1"; shift
  local log="$LOGS/$name.log"
  : >"$log"
  ( exec setsid env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
      "$@" >>"$log" 2>&1 </dev/null 9>&- ) &
  local pid=$! i
  echo "$pid" >"$PIDS/$name.pid.tmp" && mv -f "$PIDS/$name.pid.tmp" "$PIDS/$name.pid"
  # The pid is the component itself once setsid and env have exec'd; wait for that (pid_of checks it).
  for ((i = 0; i < 100; i++)); do pid_of "$name" >/dev/null && break; e2e_pid_alive "$pid" || break; sleep 0.05; done
  e2e_log "$name: started (pid $pid, log ${log#"$E2E_REPO_ROOT"/})"
}

# stop_component NAME — TERM, wait up to STOP_TIMEOUT, then KILL; removes the pid file.
stop_component() {
  local name="$1" pid waited=0
  [[ -f "$PIDS/$name.pid" ]] || return 0
  if pid="$(pid_of "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    while e2e_pid_alive "$pid" && ((waited < STOP_TIMEOUT * 10)); do sleep 0.1; waited=$((waited + 1)); done
    if e2e_pid_alive "$pid"; then
      e2e_log "$name: still running after ${STOP_TIMEOUT}s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      waited=0
      while e2e_pid_alive "$pid" && ((waited < 50)); do sleep 0.1; waited=$((waited + 1)); done
    fi
    e2e_log "$name: stopped (pid $pid)"
  else
    e2e_log "$name: not running (stale pid file removed)"
  fi
  rm -f "$PIDS/$name.pid"
}

# stop_all — stops every recorded component in reverse start order (full mode: drains the node first,
# removes containerd's containers before containerd stops, runs kube-proxy --cleanup after it), then
# cleans the node (cleanup.sh; a no-op for a control-plane-only cluster).
stop_all() {
  local i name f
  # Full mode: let the kubelet tear pods down properly (CNI DEL, netns, mounts) while it still runs.
  if pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null; then drain_node || true; fi
  for ((i = ${#ALL_COMPONENTS[@]} - 1; i >= 0; i--)); do
    [[ "${ALL_COMPONENTS[i]}" != containerd ]] || forget_containers
    stop_component "${ALL_COMPONENTS[i]}"
    [[ "${ALL_COMPONENTS[i]}" != kube-proxy ]] || kube_proxy_cleanup
  done
  # Anything else this script recorded (future components not yet in ALL_COMPONENTS).
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    name="$(basename "$f" .pid)"; stop_component "$name"
  done
  cleanup_node
}

# wait_for NAME DESCRIPTION TIMEOUT CMD... — polls CMD until it succeeds; fails early when NAME died.
wait_for() {
  local name="$1" what="$2" timeout="$3"; shift 3
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "$name" >/dev/null; then
      e2e_log "$name exited; last lines of ${LOGS#"$E2E_REPO_ROOT"/}/$name.log:"
      tail -n 40 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    if ((SECONDS - start >= timeout)); then
      e2e_log "timed out after ${timeout}s waiting for $what; last lines of $name.log:"
      tail -n 40 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  e2e_log "$what: ok after $((SECONDS - start))s"
}

check_ports_free() {
  local port busy=0
  for port in "$@"; do
    if e2e_port_busy "$port"; then
      e2e_log "port $port is in use: $(ss -Hltnp "sport = :$port" 2>/dev/null | head -n1 | tr -s ' ')"
      busy=1
    fi
  done
  ((busy == 0)) || e2e_die "ports busy; stop what holds them or pick others (E2E_ETCD_PORT, E2E_ETCD_PEER_PORT, E2E_APISERVER_PORT, E2E_KCM_PORT, E2E_SCHEDULER_PORT)"
}
