# shellcheck shell=bash
# e2e/cluster.d/node.sh — the single node (full mode): preflight (root, tools, conflicts with what
# the host already has), containerd with its CNI config (templates/containerd.toml,
# templates/cni.conflist), the kubelet (templates/kubelet.yaml) in its own cgroup root, the start
# order of the node's components, and draining the node on `down` (pods deleted through the API,
# then containerd's containers removed). Sourced by e2e/cluster.

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# node_preflight — dies naming what keeps this machine from running the node.
node_preflight() {
  [[ "$(id -u)" == 0 ]] || e2e_die "full mode needs root (network, mounts, cgroups)"
  node_preflight_tools
  node_preflight_conflicts
}

# node_preflight_tools — the node's programs, CNI plugins, a cgroup filesystem and br_netfilter.
node_preflight_tools() {
  local c missing=()
  for c in containerd containerd-shim-runc-v2 runc ctr iptables iptables-save ip ipset python3 gcc dig; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback && -x /usr/lib/cni/portmap ]] || missing+=("CNI plugins in /usr/lib/cni")
  command -v conntrack >/dev/null || missing+=(conntrack)
  ((${#missing[@]} == 0)) || e2e_die "missing: ${missing[*]} (apt-get install containerd runc containernetworking-plugins iptables ipset conntrack iproute2 python3 gcc libc6-dev redis-server redis-tools dnsutils)"
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || e2e_die "no cgroup filesystem at /sys/fs/cgroup"
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null ||
    e2e_die "br_netfilter is not available (/proc/sys/net/bridge missing)"
}

# node_preflight_conflicts — another state dir's node, a bridge we did not create, host routes over
# our ranges, busy node ports.
node_preflight_conflicts() {
  if [[ -f "$NODE_OWNER_FILE" && "$(cat "$NODE_OWNER_FILE")" != "$STATE" ]]; then
    e2e_die "the node (network, /var/lib/chat-cluster) belongs to the cluster of $(cat "$NODE_OWNER_FILE"); run 'E2E_STATE_DIR=$(cat "$NODE_OWNER_FILE") e2e/cluster down' first"
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1 && [[ ! -f "$NODE_OWNER_FILE" ]]; then
    e2e_die "interface $BRIDGE exists but this script did not record creating it; remove it or set E2E_BRIDGE"
  fi
  # The pod and service ranges must not overlap any route the host already has (ours are removed first).
  local net route
  for net in "$POD_CIDR" "${SERVICE_CIDR}"; do
    route="$(ip -4 route show match "${net%/*}" 2>/dev/null | grep -v '^default' | grep -v "dev $BRIDGE" | grep -v '^blackhole' || true)"
    [[ -z "$route" ]] || e2e_die "the host already routes $net ($route); pick other ranges (E2E_POD_CIDR, E2E_SERVICE_CIDR)"
  done
  local port
  for port in 53 "$KUBELET_PORT" 10248 10249 10256 "${COREDNS_HEALTH##*:}" "${COREDNS_READY##*:}"; do
    if [[ -n "$(ss -Hlntu "sport = :$port" 2>/dev/null)" ]]; then
      e2e_die "port $port is in use: $(ss -Hlntup "sport = :$port" | head -n1 | tr -s ' ')"
    fi
  done
}

# start_node — (full mode, after the control plane) the node's components in order, then waits for
# node Ready, our network jumps first, the add-ons, cluster DNS answering and the network check.
start_node() {
  start_kube_scheduler
  start_containerd
  import_images
  start_kubelet
  start_kube_proxy
  wait_for kubelet "node $NODE_NAME Ready" "$READY_TIMEOUT" node_ready
  iptables_jumps_first || e2e_die "could not put the network safety jumps first"
  apply_addons
  start_kube_router
  start_coredns
  wait_for coredns "cluster DNS answers kubernetes.default.svc.cluster.local" 60 dns_answers
  check_network || e2e_die "network safety check failed after setup"
}

# prepare_node_dirs — leftovers of an earlier node (e.g. after a reboot, which empties /run but not
# /var/lib): the names are this script's own; refuse only if something is still mounted there.
prepare_node_dirs() {
  if node_mounts_remain; then
    e2e_die "mounts remain under $RUN_ROOT or $NODE_ROOT from an earlier node; run e2e/cluster down (or unmount them)"
  fi
  rm -rf "$RUN_ROOT" "$NODE_ROOT" "$HOSTPATH_PV_DIR"
}

# node_mounts_remain — true if anything is mounted under RUN_ROOT or NODE_ROOT.
node_mounts_remain() {
  awk -v a="$RUN_ROOT" -v b="$NODE_ROOT" 'index($5, a) == 1 || index($5, b) == 1 {f=1} END {exit !f}' /proc/self/mountinfo
}

# write_containerd_config — the node's own containerd (never the system one) and its CNI network:
# bridge on BRIDGE with host-local IPAM over NODE_CIDR, no masquerade (nothing leaves the machine),
# portmap for hostPort.
# shellcheck disable=SC2034 # RUNC_PATH is read by render_template (templates/containerd.toml)
write_containerd_config() {
  mkdir -p "$NODE_ROOT/containerd" "$RUN_ROOT/containerd" "$NODE_ROOT/cni/net.d" "$NODE_ROOT/cni/ipam"
  local RUNC_PATH; RUNC_PATH="$(command -v runc)"
  render_template containerd.toml >"$CONFIG/containerd.toml"
  render_template cni.conflist >"$NODE_ROOT/cni/net.d/10-chat-cluster.conflist"
}

start_containerd() {
  write_containerd_config
  start_component containerd containerd --config "$CONFIG/containerd.toml"
  wait_for containerd "containerd socket" 60 ctr --address "$CONTAINERD_SOCK" version
}

# cgroup v1: the kubelet's cgroupRoot must exist in every hierarchy. (v2: one directory.)
make_cgroup_root() {
  local d
  for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -e "$d/cgroup.procs" ]] || continue
    [[ "$d" == /sys/fs/cgroup/ && -d /sys/fs/cgroup/memory ]] && continue
    mkdir -p "$d$CGROUP_ROOT"
  done
}

# start_kubelet — the kubelet on the node address with containerd, cgroupfs under CGROUP_ROOT, the
# cluster DNS and no host resolv.conf (templates/kubelet.yaml).
start_kubelet() {
  write_kubeconfig "$CONFIG/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  mkdir -p "$NODE_ROOT/kubelet" "$NODE_ROOT/pod-logs"
  make_cgroup_root
  render_template kubelet.yaml >"$CONFIG/kubelet.yaml"
  start_component kubelet "$K8S_BIN/kubelet" \
    --config="$CONFIG/kubelet.yaml" --kubeconfig="$CONFIG/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$NODE_ROOT/kubelet" --v=1
  wait_for kubelet "kubelet /healthz" "$READY_TIMEOUT" curl -fsS --max-time 5 http://127.0.0.1:10248/healthz
}

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# drain_node — stop the controllers (nothing gets recreated), delete every pod and let the kubelet
# stop the containers and tear down the sandboxes (CNI DEL, netns, volume mounts) itself.
drain_node() {
  stop_component kube-controller-manager
  stop_component kube-scheduler
  [[ -n "$(kubectl_ get pods -A -o name 2>/dev/null | head -n1)" ]] || return 0
  e2e_log "deleting all pods so the kubelet tears them down"
  kubectl_ delete pods --all -A --grace-period=2 --wait=false >/dev/null 2>&1 || true
  local start=$SECONDS
  while [[ -n "$(kubectl_ get pods -A -o name 2>/dev/null | head -n1)" ]]; do
    if ((SECONDS - start > 60)); then e2e_log "pods still present after 60s; forcing"; break; fi
    sleep 1
  done
  kubectl_ delete pods --all -A --force --grace-period=0 >/dev/null 2>&1 || true
  e2e_log "pods gone after $((SECONDS - start))s"
}

# forget_containers — with containerd still up: note the pods' network namespaces (for cleanup_node),
# kill what still runs and delete the containers (snapshots go with them). Images stay until cleanup.
forget_containers() {
  pid_of containerd >/dev/null || return 0
  local id ns
  ctr_ containers ls -q 2>/dev/null | while read -r id; do
    ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json, sys
for ns in json.load(sys.stdin).get("Spec", {}).get("linux", {}).get("namespaces", []):
    if ns.get("type") == "network" and ns.get("path"):
        print(ns["path"])' 2>/dev/null || true
  done | sort -u >>"$STATE/netns.list"
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  sleep 0.5
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  ns="$(wc -l <"$STATE/netns.list" 2>/dev/null || echo 0)"
  e2e_log "containerd: containers removed ($ns network namespaces noted)"
}

# start_hostpath_permissions — the watcher that makes hostPath-provisioned volume dirs writable for
# the images' non-root user (e2e/lib/hostpath-permissions).
start_hostpath_permissions() {
  start_component hostpath-permissions "$PYTHON" "$E2E_DIR/lib/hostpath-permissions" "$HOSTPATH_PV_DIR"
  wait_for hostpath-permissions "hostpath-permissions watching $HOSTPATH_PV_DIR" 30 grep -q watching "$LOGS/hostpath-permissions.log"
}

# apply_addons — the cluster objects the node's host processes need: the default StorageClass
# (templates/storage-class.yaml), CoreDNS's RBAC, `kube-dns` Service and the EndpointSlice that
# points it at the host process (templates/dns-objects.yaml), and kube-router's RBAC
# (templates/kube-router-rbac.yaml).
apply_addons() {
  { render_template storage-class.yaml; echo ---; render_template dns-objects.yaml; echo ---
    render_template kube-router-rbac.yaml; } |
    kubectl_ apply -f - >/dev/null || e2e_die "applying the cluster add-ons failed"
}
