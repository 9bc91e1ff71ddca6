# shellcheck shell=bash
# e2e/cluster.d/network.sh — the node's network and its safety rules (full mode): sysctls (saved and
# restored), the bridge with the node address, the service-range route and the blackholes, the
# CHAT-CLUSTER-* iptables chains (mangle) and their jumps kept first, kube-proxy itself
# (templates/kube-proxy.yaml), and `check-network`, which verifies all of it. Sourced by e2e/cluster.

# Interfaces that carry the default route(s): the machine's real uplink(s).
uplinks() { { ip -4 route show default; ip -6 route show default; } 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="dev") print $(i+1)}' | sort -u; }

# save_sysctls — remembers, once per cluster, the values of every sysctl we or the kubelet change in
# STATE/sysctl.saved; restore_sysctls puts them back and removes the file.
save_sysctls() {
  [[ -f "$STATE/sysctl.saved" ]] && return 0
  local k
  for k in "${OUR_SYSCTLS[@]}" "${KUBELET_SYSCTLS[@]}"; do
    echo "$k=$(sysctl -n "$k" 2>/dev/null || echo '')"
  done >"$STATE/sysctl.saved.tmp"
  mv -f "$STATE/sysctl.saved.tmp" "$STATE/sysctl.saved"
}
restore_sysctls() {
  [[ -f "$STATE/sysctl.saved" ]] || return 0
  local line k v
  while IFS= read -r line; do
    k="${line%%=*}"; v="${line#*=}"
    [[ -n "$v" ]] || continue
    [[ "$(sysctl -n "$k" 2>/dev/null)" == "$v" ]] || sysctl -qw "$k=$v" >/dev/null 2>&1 || e2e_log "warning: could not restore $k=$v"
  done <"$STATE/sysctl.saved"
  rm -f "$STATE/sysctl.saved"
  e2e_log "sysctls restored"
}

network_up() {
  echo "$STATE" >"$NODE_OWNER_FILE"
  save_sysctls
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/dev/null
  local prefix="${NODE_CIDR#*/}"
  ip link add "$BRIDGE" type bridge 2>/dev/null || ip link show "$BRIDGE" >/dev/null
  ip addr replace "$NODE_IP/$prefix" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Host -> ClusterIP needs a real route (the OUTPUT DNAT runs after the route lookup); it goes to the
  # bridge, so an unmatched service address dies there. The blackholes catch everything else.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP" metric 100
  ip route replace blackhole "$SERVICE_CIDR" metric 1000
  ip route replace blackhole "$POD_CIDR"
  iptables_rules_up
  e2e_log "network: $BRIDGE $NODE_IP/$prefix, routes for $SERVICE_CIDR and $POD_CIDR, $CHAIN_EGRESS/$CHAIN_FORWARD rules (uplinks: $(uplinks | tr '\n' ' '))"
}

# iptables_rules_up — creates (or flushes and refills) our three chains and puts their jumps in place.
iptables_rules_up() {
  iptables_egress_chain
  iptables_uplink_chains
  local spec table chain target
  for spec in "${OUR_JUMPS[@]}"; do
    read -r table chain target <<<"$spec"
    iptables -t "$table" -C "$chain" -j "$target" 2>/dev/null || iptables -t "$table" -I "$chain" 1 -j "$target"
  done
}

# iptables_egress_chain — mangle CHAT-CLUSTER-EGRESS: nothing of the pod or service ranges leaves by
# an interface other than lo and the bridge (after every DNAT, whatever filter accepted).
iptables_egress_chain() {
  iptables -t mangle -N "$CHAIN_EGRESS" 2>/dev/null || iptables -t mangle -F "$CHAIN_EGRESS"
  iptables -t mangle -A "$CHAIN_EGRESS" -o lo -j RETURN
  iptables -t mangle -A "$CHAIN_EGRESS" -o "$BRIDGE" -j RETURN
  iptables -t mangle -A "$CHAIN_EGRESS" -s "$POD_CIDR" -j DROP
  iptables -t mangle -A "$CHAIN_EGRESS" -d "$POD_CIDR" -j DROP
  iptables -t mangle -A "$CHAIN_EGRESS" -d "$SERVICE_CIDR" -j DROP
}

# iptables_uplink_chains — mangle CHAT-CLUSTER-FORWARD and CHAT-CLUSTER-INPUT: per uplink, no pod
# traffic to or from it, no forwarding between uplinks, and the node address and service range
# unreachable from it. In mangle, so they come before every filter chain (kube-proxy's ACCEPTs,
# kube-router's NetworkPolicy chains) and accept nothing on filter's behalf: pod-to-pod traffic over
# the bridge goes on to filter, where kube-router enforces the NetworkPolicies.
iptables_uplink_chains() {
  iptables -t mangle -N "$CHAIN_FORWARD" 2>/dev/null || iptables -t mangle -F "$CHAIN_FORWARD"
  iptables -t mangle -N "$CHAIN_INPUT" 2>/dev/null || iptables -t mangle -F "$CHAIN_INPUT"
  local up
  while read -r up; do
    [[ -n "$up" ]] || continue
    iptables -t mangle -A "$CHAIN_FORWARD" -s "$POD_CIDR" -o "$up" -j DROP
    iptables -t mangle -A "$CHAIN_FORWARD" -d "$POD_CIDR" -i "$up" -j DROP
    # ip_forward=1 must not make this machine a router between outside hosts.
    iptables -t mangle -A "$CHAIN_FORWARD" -i "$up" -o "$up" -j DROP
    # The node address (apiserver, kubelet, DNS) is for this machine and its pods only.
    iptables -t mangle -A "$CHAIN_INPUT" -d "$POD_CIDR" -i "$up" -j DROP
    iptables -t mangle -A "$CHAIN_INPUT" -d "$SERVICE_CIDR" -i "$up" -j DROP
  done < <(uplinks)
}

# Our jumps first in their built-in chains. kube-proxy prepends its jumps (and the kubelet's
# KUBE-FIREWALL ones) during its first full sync, which can run well after its /healthz answers;
# afterwards it only checks that they exist, so moving ours in front once that sync is done is
# stable. Waits for the sync, moves ours, and checks the order (again if something raced).
iptables_jumps_first() {
  local table chain target spec try
  wait_for kube-proxy "kube-proxy first full sync (jump rules in place)" "$READY_TIMEOUT" kube_proxy_synced ||
    return 1
  for try in 1 2 3 4 5; do
    for spec in "${OUR_JUMPS[@]}"; do
      read -r table chain target <<<"$spec"
      while iptables -t "$table" -D "$chain" -j "$target" 2>/dev/null; do :; done
      iptables -t "$table" -I "$chain" 1 -j "$target"
    done
    sleep 1
    if our_jumps_first; then
      e2e_log "network: our jumps first in mangle POSTROUTING, FORWARD and INPUT (attempt $try)"
      return 0
    fi
  done
  e2e_log "network: something keeps inserting rules in front of ours: $(iptables -t mangle -S FORWARD | head -n 3 | tr '\n' ';')"
  return 1
}

# kube_proxy_synced — kube-proxy finished a full sync (its metric counts one) and the last jump it
# ensures (filter OUTPUT -> KUBE-FIREWALL) exists.
kube_proxy_synced() {
  curl -fsS --max-time 5 http://127.0.0.1:10249/metrics |
    awk '$1 ~ /^kubeproxy_sync_full_proxy_rules_duration_seconds_count/ && $2 > 0 {found=1} END {exit !found}' &&
    iptables -t filter -C OUTPUT -j KUBE-FIREWALL
}

our_jumps_first() {
  local spec table chain target
  for spec in "${OUR_JUMPS[@]}"; do
    read -r table chain target <<<"$spec"
    [[ "$(first_jump "$table" "$chain")" == "$target" ]] || return 1
  done
}

# first_jump TABLE CHAIN — the target of the first rule of a built-in chain.
first_jump() { iptables -t "$1" -S "$2" 2>/dev/null | awk '$1 == "-A" {for (i = 1; i < NF; i++) if ($i == "-j") {print $(i + 1); exit}}'; }

# check_network — prints each problem; returns 1 if any.
check_network() {
  local bad=0
  fail() { echo "check-network: MISSING: $*" >&2; bad=1; }
  check_routes
  check_iptables
  check_dns_isolation
  if ((bad)); then return 1; fi
  echo "check-network: ok (uplinks: $(uplinks | tr '\n' ' ')bridge $BRIDGE $NODE_IP, pods $POD_CIDR, services $SERVICE_CIDR)" >&2
}

# check_routes — (check_network) the bridge address, the service route, both blackholes, and no
# cluster address routed via an uplink.
check_routes() {
  local up r
  # (outputs captured first: `cmd | grep -q` can fail under pipefail when grep exits early)
  local addrs routes blackholes
  addrs="$(ip -4 addr show dev "$BRIDGE" 2>/dev/null || true)"
  routes="$(ip -4 route show "$SERVICE_CIDR" 2>/dev/null || true)"
  blackholes="$(ip -4 route show type blackhole 2>/dev/null || true)"
  grep -q "inet $NODE_IP/" <<<"$addrs" || fail "bridge $BRIDGE with $NODE_IP"
  grep -q "dev $BRIDGE" <<<"$routes" || fail "route $SERVICE_CIDR dev $BRIDGE"
  grep -q "^blackhole $SERVICE_CIDR" <<<"$blackholes" || fail "blackhole route $SERVICE_CIDR"
  grep -q "^blackhole $POD_CIDR" <<<"$blackholes" || fail "blackhole route $POD_CIDR"
  for r in "$(cidr_host "$SERVICE_CIDR" 200)" "$(cidr_host "$POD_CIDR" 250)" "${POD_CIDR%.*.*}.200.9"; do
    local via; via="$(ip -4 route get "$r" 2>&1 || true)"
    while read -r up; do
      [[ -n "$up" && "$via" == *"dev $up "* ]] && fail "cluster address $r would leave via $up ($via)"
    done < <(uplinks)
  done
  return 0
}

# check_iptables — (check_network) our jumps exist and come first, and every rule of our chains is there.
check_iptables() {
  local spec table chain target up
  for spec in "${OUR_JUMPS[@]}"; do
    read -r table chain target <<<"$spec"
    iptables -t "$table" -C "$chain" -j "$target" 2>/dev/null || fail "iptables -t $table $chain -j $target"
    [[ "$(first_jump "$table" "$chain")" == "$target" ]] || fail "$target jump first in $table $chain"
  done
  local rule
  for rule in "-s $POD_CIDR -j DROP" "-d $POD_CIDR -j DROP" "-d $SERVICE_CIDR -j DROP" "-o $BRIDGE -j RETURN" "-o lo -j RETURN"; do
    # shellcheck disable=SC2086 # rule is a list of words
    iptables -t mangle -C "$CHAIN_EGRESS" $rule 2>/dev/null || fail "mangle $CHAIN_EGRESS: $rule"
  done
  while read -r up; do
    [[ -n "$up" ]] || continue
    iptables -t mangle -C "$CHAIN_FORWARD" -s "$POD_CIDR" -o "$up" -j DROP 2>/dev/null || fail "mangle $CHAIN_FORWARD: -s $POD_CIDR -o $up -j DROP"
    iptables -t mangle -C "$CHAIN_FORWARD" -d "$POD_CIDR" -i "$up" -j DROP 2>/dev/null || fail "mangle $CHAIN_FORWARD: -d $POD_CIDR -i $up -j DROP"
    iptables -t mangle -C "$CHAIN_FORWARD" -i "$up" -o "$up" -j DROP 2>/dev/null || fail "mangle $CHAIN_FORWARD: -i $up -o $up -j DROP"
    iptables -t mangle -C "$CHAIN_INPUT" -d "$POD_CIDR" -i "$up" -j DROP 2>/dev/null || fail "mangle $CHAIN_INPUT: -d $POD_CIDR -i $up -j DROP"
  done < <(uplinks)
  return 0
}

# check_dns_isolation — (check_network) no DNS upstream: the Corefile has no forward/grpc/proxy, the
# running CoreDNS has no such plugin compiled in, and the kubelet gives pods no host resolv.conf.
check_dns_isolation() {
  local pid
  if [[ -f "$CONFIG/Corefile" ]]; then
    grep -Eq '^[[:space:]]*(forward|grpc|proxy)\b' "$CONFIG/Corefile" && fail "no upstream in Corefile (found a forward/grpc/proxy line)"
  else
    fail "CoreDNS config $CONFIG/Corefile"
  fi
  if pid="$(pid_of coredns)"; then
    local plugins; plugins="$("/proc/$pid/exe" -plugins 2>/dev/null || true)"
    ! grep -Eqx '[[:space:]]*(dns\.)?(forward|grpc)' <<<"$plugins" || fail "coredns binary without forward/grpc plugins"
  fi
  if [[ -f "$CONFIG/kubelet.yaml" ]]; then grep -q '^resolvConf: ""' "$CONFIG/kubelet.yaml" || fail "kubelet resolvConf \"\""; fi
  return 0
}

# start_kube_proxy — kube-proxy in iptables mode on the node address (templates/kube-proxy.yaml).
start_kube_proxy() {
  write_kubeconfig "$CONFIG/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  render_template kube-proxy.yaml >"$CONFIG/kube-proxy.yaml"
  start_component kube-proxy "$K8S_BIN/kube-proxy" --config="$CONFIG/kube-proxy.yaml"
  wait_for kube-proxy "kube-proxy /healthz" "$READY_TIMEOUT" curl -fsS --max-time 5 http://127.0.0.1:10256/healthz
}

kube_proxy_cleanup() {
  [[ -x "$K8S_BIN/kube-proxy" && -f "$CONFIG/kube-proxy.yaml" ]] || return 0
  "$K8S_BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy.log" 2>&1 || e2e_log "warning: kube-proxy --cleanup failed (see kube-proxy.log)"
}

# network_down — (cleanup_node, after the pods' namespaces are gone) removes the veths left on the
# bridge, the bridge, our routes, every CHAT-CLUSTER-*, KUBE-* (kube-proxy's, kube-router's) and
# CNI-* iptables chain (IPv4 and IPv6, all tables) with the jumps to them, kube-router's ipsets
# (policy.sh), and restores the sysctls.
network_down() {
  local link
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  while ip route del blackhole "$SERVICE_CIDR" 2>/dev/null; do :; done
  while ip route del blackhole "$POD_CIDR" 2>/dev/null; do :; done
  local tool table
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for table in filter nat mangle raw; do
      iptables_remove_chains "$tool" "$table" "CHAT-CLUSTER-[A-Z-]+|KUBE-[A-Z0-9-]+|CNI-[A-Za-z0-9_-]+"
    done
  done
  ipsets_remove
  restore_sysctls
}

# iptables_remove_chains TOOL TABLE REGEX — deletes the jumps to matching chains from every chain,
# then flushes and deletes the matching chains.
iptables_remove_chains() {
  local tool="$1" table="$2" re="$3" rule chain chains
  "$tool" -t "$table" -S >/dev/null 2>&1 || return 0
  while IFS= read -r rule; do
    eval "$tool -t $table -D ${rule#-A }" 2>/dev/null || true
  done < <("$tool" -t "$table" -S 2>/dev/null | grep -E "^-A .* -j ($re)( |$)" | grep -Ev "^-A ($re) " || true)
  mapfile -t chains < <("$tool" -t "$table" -S 2>/dev/null | awk '$1=="-N"{print $2}' | grep -E "^($re)$" || true)
  for chain in "${chains[@]}"; do "$tool" -t "$table" -F "$chain" 2>/dev/null || true; done
  for chain in "${chains[@]}"; do "$tool" -t "$table" -X "$chain" 2>/dev/null || true; done
}
