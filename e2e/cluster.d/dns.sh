# shellcheck shell=bash
# e2e/cluster.d/dns.sh — cluster DNS (full mode): CoreDNS from e2e/coredns (built without the
# forward/grpc plugins) as a host process on the node address, configured for cluster names only
# (templates/Corefile), and the check that the host gets an answer through the `kube-dns` Service IP.
# Its RBAC, Service and EndpointSlice are in templates/dns-objects.yaml (applied by node.sh's
# apply_addons). Sourced by e2e/cluster.

# start_coredns — builds (cached) and starts CoreDNS; waits for its /ready.
start_coredns() {
  local bin; bin="$("$E2E_DIR/coredns/build")" || e2e_die "building coredns failed"
  write_kubeconfig "$CONFIG/coredns.kubeconfig" system:coredns coredns
  render_template Corefile >"$CONFIG/Corefile"
  start_component coredns "$bin" -conf "$CONFIG/Corefile"
  wait_for coredns "CoreDNS /ready" "$READY_TIMEOUT" curl -fsS --max-time 5 "http://$COREDNS_READY/ready"
}

# dns_answers — the host asks the cluster DNS Service IP (through kube-proxy's rules) for the API Service.
dns_answers() {
  [[ "$(dig +short +time=2 +tries=1 @"$DNS_SERVICE_IP" kubernetes.default.svc.cluster.local A)" == "$(first_service_ip)" ]]
}
