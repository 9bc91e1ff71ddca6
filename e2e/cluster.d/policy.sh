# shellcheck shell=bash
# e2e/cluster.d/policy.sh — NetworkPolicy enforcement on the node (full mode): kube-router, built from
# its Go module (e2e/kube-router), as a host process in firewall-only mode (no routing, no service
# proxy: the bridge CNI and kube-proxy keep doing those), with its own client certificate
# (`system:kube-router`, RBAC in templates/kube-router-rbac.yaml, applied by node.sh's apply_addons).
# It turns every NetworkPolicy into iptables chains and ipsets in the filter table; it admits traffic
# from the node itself to every pod (the kubelet's probes, the API server's pod proxy), as the
# NetworkPolicy reference requires. Sourced by e2e/cluster.

# start_kube_router — builds (cached) and starts kube-router; waits until its chains are hooked in.
# Its health server would listen on every address (no bind flag), so it is off (--health-port=0).
start_kube_router() {
  local bin; bin="$("$E2E_DIR/kube-router/build")" || e2e_die "building kube-router failed"
  command -v ipset >/dev/null || e2e_die "ipset not found (apt-get install ipset)"
  write_kubeconfig "$CONFIG/kube-router.kubeconfig" system:kube-router kube-router
  start_component kube-router "$bin" \
    --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
    --enable-cni=false --enable-ipv4=true --enable-ipv6=false \
    --kubeconfig="$CONFIG/kube-router.kubeconfig" --hostname-override="$NODE_NAME" \
    --service-cluster-ip-range="$SERVICE_CIDR" --health-port=0 --metrics-port=0 \
    --iptables-sync-period=1m --v=1
  wait_for kube-router "kube-router NetworkPolicy chains in filter INPUT, FORWARD and OUTPUT" "$READY_TIMEOUT" kube_router_hooked
}

# kube_router_hooked — kube-router's jumps are in place in all three filter chains.
kube_router_hooked() {
  local chain
  for chain in INPUT FORWARD OUTPUT; do
    iptables -t filter -S "$chain" 2>/dev/null | grep -q -- "-j KUBE-ROUTER-$chain" || return 1
  done
}

# ipsets_remove — destroys kube-router's ipsets (after network_down removed the rules that use them).
ipsets_remove() {
  command -v ipset >/dev/null || return 0
  local set
  while read -r set; do
    ipset destroy "$set" 2>/dev/null || e2e_log "warning: could not destroy ipset $set"
  done < <(our_ipsets)
}

# our_ipsets — the names of kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, kube-router-*, and their
# inet6: twins).
our_ipsets() {
  command -v ipset >/dev/null || return 0
  ipset list -n 2>/dev/null | grep -E '^(inet6:)?(KUBE-|kube-router)' || true
}
