# shellcheck shell=bash
# e2e/cluster.d/images.sh — what `up` builds before it starts anything (all cached): the Kubernetes
# binaries (e2e/k8s/build), CoreDNS (e2e/coredns/build), kube-router (e2e/kube-router/build) and
# the node's images (e2e/images/build:
# pause, redis and, unless --no-app-images, chat-server and operator), and the import of those images
# into the node's containerd. Sourced by e2e/cluster.

# build_all — builds what MODE needs; sets BUILD_TIMES ("k8s Ns, coredns Ns, images Ns") and
# BUILD_SECONDS for `up`'s summary line.
build_all() {
  local t0=$SECONDS t_k8s t_dns=0 t_img=0
  if [[ "$MODE" == full ]]; then
    "$E2E_DIR/k8s/build" || e2e_die "building the Kubernetes binaries failed"
    t_k8s=$((SECONDS - t0))
    "$E2E_DIR/coredns/build" >/dev/null || e2e_die "building coredns failed"
    "$E2E_DIR/kube-router/build" >/dev/null || e2e_die "building kube-router failed"
    t_dns=$((SECONDS - t0 - t_k8s))
    local only=(pause redis chat-server operator)
    ((APP_IMAGES)) || only=(pause redis)
    "$E2E_DIR/images/build" --only "${only[*]}" || e2e_die "building the images failed"
    t_img=$((SECONDS - t0 - t_k8s - t_dns))
  else
    "$E2E_DIR/k8s/build" --only "${CONTROL_PLANE[*]} kubectl" || e2e_die "building the binaries failed"
    t_k8s=$((SECONDS - t0))
  fi
  # shellcheck disable=SC2034 # read by cmd_up (e2e/cluster)
  BUILD_SECONDS=$((SECONDS - t0))
  # shellcheck disable=SC2034 # read by cmd_up (e2e/cluster)
  BUILD_TIMES="k8s ${t_k8s}s, coredns+kube-router ${t_dns}s, images ${t_img}s"
}

# import_images — the built images into the node's containerd (k8s.io namespace).
import_images() {
  E2E_CONTAINERD_ADDRESS="$CONTAINERD_SOCK" "$E2E_DIR/images/import" || e2e_die "importing the images failed"
}
