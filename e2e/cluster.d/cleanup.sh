# shellcheck shell=bash
# e2e/cluster.d/cleanup.sh — what `down` removes from the machine after the components stopped
# (leftover shims and container processes, cgroups, mounts, network namespaces, then network.sh's
# network_down and the node directories), and `check-clean`, which verifies that nothing of the
# cluster remains. Sourced by e2e/cluster.

# cgroup_cleanup — SIGKILL every process left in the kubelet's cgroup tree (containers whose shim
# died), then remove the tree bottom-up.
cgroup_cleanup() {
  local d pid n=0
  for d in /sys/fs/cgroup/*/"$CGROUP_ROOT" /sys/fs/cgroup/"$CGROUP_ROOT"; do
    [[ -d "$d" ]] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null && n=$((n + 1)); done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
  ((n == 0)) || { e2e_log "killed $n leftover container processes"; sleep 0.5; }
  for d in /sys/fs/cgroup/*/"$CGROUP_ROOT" /sys/fs/cgroup/"$CGROUP_ROOT"; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d "$d" ]] || e2e_log "warning: cgroup $d could not be removed completely"
  done
}

# Our shims: containerd-shim-runc-v2 processes started with our containerd's address.
kill_our_shims() {
  local p exe
  for p in /proc/[0-9]*; do
    exe="$(readlink "$p/exe" 2>/dev/null || true)"
    [[ "$(basename "${exe% (deleted)}")" == containerd-shim* ]] || continue
    [[ "$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" == *"-address $CONTAINERD_SOCK "* ]] || continue
    kill -KILL "${p#/proc/}" 2>/dev/null && e2e_log "killed leftover shim ${p#/proc/}"
  done
}

unmount_under() {
  local prefix mnt n=0
  for prefix in "$@"; do
    while read -r mnt; do
      umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || e2e_log "warning: cannot unmount $mnt"
      n=$((n + 1))
    done < <(awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo | sort -r -u)
  done
  ((n == 0)) || e2e_log "unmounted $n mounts"
}

netns_cleanup() {
  local ns id name
  # Namespaces holding the peer of one of our bridge's ports (if the sandboxes were not torn down).
  while read -r id; do
    name="$(ip netns list 2>/dev/null | awk -v id="$id" '$0 ~ "\\(id: " id "\\)" {print $1}')"
    [[ -n "$name" ]] && echo "/var/run/netns/$name" >>"$STATE/netns.list"
  done < <(ip -o link show master "$BRIDGE" 2>/dev/null | sed -n 's/.*link-netnsid \([0-9]*\).*/\1/p')
  [[ -f "$STATE/netns.list" ]] || return 0
  while read -r ns; do
    [[ -n "$ns" && -e "$ns" ]] || continue
    umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
    rm -f "$ns" && e2e_log "removed network namespace $ns"
  done < <(sort -u "$STATE/netns.list")
  rm -f "$STATE/netns.list"
}

# cleanup_node — (full mode; a no-op unless this state dir owns the node) removes everything the node
# left on the machine.
cleanup_node() {
  [[ -f "$NODE_OWNER_FILE" && "$(cat "$NODE_OWNER_FILE")" == "$STATE" ]] || return 0
  kill_our_shims
  cgroup_cleanup
  unmount_under "$RUN_ROOT" "$NODE_ROOT"
  netns_cleanup
  network_down
  if node_mounts_remain; then
    e2e_log "warning: mounts remain under $RUN_ROOT or $NODE_ROOT; leaving those directories"
  else
    rm -rf "$RUN_ROOT" "$NODE_ROOT"
  fi
  rm -rf "$HOSTPATH_PV_DIR"
  rm -f "$NODE_OWNER_FILE"
  e2e_log "node cleaned up (bridge, routes, iptables chains, mounts, cgroups, $NODE_ROOT, $RUN_ROOT, $HOSTPATH_PV_DIR)"
}

# check_clean — after `down`: verifies that nothing of the cluster is left on the machine: no process
# run from the Kubernetes binaries or with our containerd socket, no mount under our node dirs, no
# bridge, veth or CNI network namespace, no route of our ranges, no iptables chain of ours, kube-proxy's
# or CNI's. Exit 1 listing what remains.
check_clean() {
  local left=()
  leftover_processes
  leftover_network
  [[ -e "$NODE_OWNER_FILE" ]] && left+=("file $NODE_OWNER_FILE")
  if ((${#left[@]})); then
    printf '  left behind: %s\n' "${left[@]}" >&2
    e2e_die "the machine is not clean after down (${#left[@]} items above)"
  fi
  e2e_log "clean: no processes, mounts, interfaces, namespaces, routes or rules of the cluster remain"
}

# leftover_processes — (check_clean) adds to `left` the processes run from the Kubernetes binaries or
# with our containerd's socket or state dir, and the mounts under the node dirs.
leftover_processes() {
  local p exe cmd
  for p in /proc/[0-9]*; do
    exe="$(readlink "$p/exe" 2>/dev/null || true)"; exe="${exe% (deleted)}"
    cmd="$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null || true)"
    if [[ "$exe" == "$K8S_BIN/"* || "$cmd" == *"$CONTAINERD_SOCK"* || "$cmd" == *"$RUN_ROOT/containerd"* ]]; then
      left+=("process ${p#/proc/} ($exe)")
    fi
  done
  while read -r p; do left+=("mount $p"); done < <(awk -v a="$RUN_ROOT" -v b="$NODE_ROOT" 'index($5, a) == 1 || index($5, b) == 1 {print $5}' /proc/self/mountinfo)
}

# leftover_network — (check_clean) adds to `left` the bridge, veths, CNI network namespaces, routes
# of our ranges, iptables chains of ours, kube-proxy's, kube-router's or CNI's, and kube-router's ipsets.
leftover_network() {
  local p tool table
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("interface $BRIDGE")
  while read -r p; do left+=("interface $p"); done < <(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)
  while read -r p; do left+=("network namespace $p"); done < <(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}')
  while read -r p; do left+=("route $p"); done < <(ip -4 route show 2>/dev/null | grep -E "(${POD_CIDR%/*}|${SERVICE_CIDR%/*})/" || true)
  while read -r p; do left+=("ipset $p"); done < <(our_ipsets)
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for table in filter nat mangle raw; do
      while read -r p; do left+=("$tool -t $table chain $p"); done < <("$tool" -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E '^(CHAT-CLUSTER-|KUBE-|CNI-)' || true)
    done
  done
  return 0
}
