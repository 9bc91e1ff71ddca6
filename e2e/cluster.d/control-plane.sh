# shellcheck shell=bash
# e2e/cluster.d/control-plane.sh — etcd, kube-apiserver, kube-controller-manager and kube-scheduler:
# their flags, and the readiness each start waits for (etcd /health, apiserver /readyz, controller
# manager /healthz and the `default` ServiceAccount, scheduler /healthz). Sourced by e2e/cluster.

start_etcd() {
  rm -rf "$DATA/etcd"; mkdir -p "$DATA/etcd"; chmod 700 "$DATA/etcd"
  # Plain HTTP on loopback (only the apiserver talks to it); no fsync: the data is thrown away.
  # etcd reads every ETCD_* environment variable as a flag: start it without any.
  local unset_etcd_env=()
  while IFS= read -r var; do unset_etcd_env+=(-u "$var"); done < <(compgen -e | grep '^ETCD_' || true)
  start_component etcd env "${unset_etcd_env[@]}" "$K8S_BIN/etcd" \
    --name=e2e --data-dir="$DATA/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="e2e=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state=new \
    --unsafe-no-fsync=true
  wait_for etcd "etcd /health" 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
}

apiserver_get() { curl -fsS --max-time 5 --cacert "$CERTS/ca.crt" --cert "$CERTS/admin.crt" --key "$CERTS/admin.key" "$APISERVER_URL$1"; }

start_kube_apiserver() {
  local reconciler=lease
  # Endpoints/EndpointSlices may not hold loopback addresses: with a loopback advertise address the
  # apiserver must not publish itself in the `kubernetes` Service's endpoints.
  [[ "$APISERVER_ADVERTISE" != 127.* ]] || reconciler=none
  start_component kube-apiserver "$K8S_BIN/kube-apiserver" \
    --bind-address="$APISERVER_BIND" --secure-port="$APISERVER_PORT" \
    --advertise-address="$APISERVER_ADVERTISE" --endpoint-reconciler-type="$reconciler" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$CERTS/apiserver.crt" --tls-private-key-file="$CERTS/apiserver.key" \
    --client-ca-file="$CERTS/ca.crt" \
    --kubelet-client-certificate="$CERTS/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$CERTS/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --requestheader-client-ca-file="$CERTS/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$CERTS/front-proxy-client.crt" --proxy-client-key-file="$CERTS/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --enable-bootstrap-token-auth=true \
    --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$CERTS/sa.pub" \
    --service-account-signing-key-file="$CERTS/sa.key" \
    --profiling=false
  wait_for kube-apiserver "kube-apiserver /readyz" "$READY_TIMEOUT" apiserver_get /readyz
}

start_kube_controller_manager() {
  write_kubeconfig "$CONFIG/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  local node_flags=()
  # Full mode: node CIDR allocation (the node gets NODE_CIDR's /24 from POD_CIDR) and the hostPath
  # provisioner behind the default StorageClass.
  [[ "$MODE" != full ]] || node_flags=(--allocate-node-cidrs=true --cluster-cidr="$POD_CIDR"
    --node-cidr-mask-size="${NODE_CIDR#*/}" --enable-hostpath-provisioner=true)
  start_component kube-controller-manager "$K8S_BIN/kube-controller-manager" "${node_flags[@]}" \
    --kubeconfig="$CONFIG/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CONFIG/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CONFIG/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --tls-cert-file="$CERTS/controller-manager-serving.crt" --tls-private-key-file="$CERTS/controller-manager-serving.key" \
    --client-ca-file="$CERTS/ca.crt" --requestheader-client-ca-file="$CERTS/front-proxy-ca.crt" \
    --root-ca-file="$CERTS/ca.crt" \
    --service-account-private-key-file="$CERTS/sa.key" \
    --cluster-signing-cert-file="$CERTS/ca.crt" --cluster-signing-key-file="$CERTS/ca.key" \
    --use-service-account-credentials=true \
    --controllers='*,bootstrapsigner,tokencleaner,-service-lb-controller,-node-route-controller,-cloud-node-lifecycle-controller' \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --cluster-name=chat-cluster-e2e \
    --flex-volume-plugin-dir="$DATA/flexvolume" \
    --leader-elect=false \
    --profiling=false
  wait_for kube-controller-manager "kube-controller-manager /healthz" "$READY_TIMEOUT" \
    curl -fsS --max-time 5 --cacert "$CERTS/ca.crt" "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-controller-manager "ServiceAccount default/default" "$READY_TIMEOUT" \
    apiserver_get /api/v1/namespaces/default/serviceaccounts/default
}

start_kube_scheduler() {
  write_kubeconfig "$CONFIG/scheduler.kubeconfig" system:kube-scheduler scheduler
  start_component kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$CONFIG/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CONFIG/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CONFIG/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --tls-cert-file="$CERTS/scheduler-serving.crt" --tls-private-key-file="$CERTS/scheduler-serving.key" \
    --client-ca-file="$CERTS/ca.crt" --requestheader-client-ca-file="$CERTS/front-proxy-ca.crt" \
    --leader-elect=false --profiling=false
  wait_for kube-scheduler "kube-scheduler /healthz" "$READY_TIMEOUT" \
    curl -fsS --max-time 5 --cacert "$CERTS/ca.crt" "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}
