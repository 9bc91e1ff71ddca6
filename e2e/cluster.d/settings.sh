# shellcheck shell=bash
# shellcheck disable=SC2034 # every name here is read by the other cluster.d libraries
# e2e/cluster.d/settings.sh — the cluster's paths, ports, address ranges and component lists (all
# overridable through the E2E_* environment variables documented in e2e/cluster's header), and the
# template renderer. Sourced by e2e/cluster after e2e/lib/common.sh, e2e/k8s/env and
# e2e/images/versions; it only sets variables and defines functions.

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # the repository's e2e/
TEMPLATES="$E2E_DIR/cluster.d/templates"

STATE="${E2E_STATE_DIR:-$E2E_REPO_ROOT/target/e2e}"
CERTS="$STATE/certs"
CONFIG="$STATE/config"
DATA="$STATE/data"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
ADMIN_KUBECONFIG="$STATE/kubeconfig"

ETCD_PORT="${E2E_ETCD_PORT:-2379}"
ETCD_PEER_PORT="${E2E_ETCD_PEER_PORT:-2380}"
APISERVER_PORT="${E2E_APISERVER_PORT:-6443}"
KCM_PORT="${E2E_KCM_PORT:-10257}"
SERVICE_CIDR="${E2E_SERVICE_CIDR:-10.96.0.0/16}"
APISERVER_ADVERTISE="${E2E_APISERVER_ADVERTISE:-127.0.0.1}"
STOP_TIMEOUT="${E2E_STOP_TIMEOUT:-20}"
READY_TIMEOUT="${E2E_READY_TIMEOUT:-180}"
MODE=control-plane-only   # set by cmd_up
APP_IMAGES=1              # up --no-app-images: only the pause and redis images
APISERVER_BIND=127.0.0.1
APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"

# Full mode (node). The node address is the first address of E2E_NODE_CIDR, set on the bridge.
POD_CIDR="${E2E_POD_CIDR:-10.244.0.0/16}"
NODE_CIDR="${E2E_NODE_CIDR:-10.244.0.0/24}"
BRIDGE="${E2E_BRIDGE:-chat-cni0}"
NODE_NAME="${E2E_NODE_NAME:-chat-cluster-node}"
NODE_ROOT=/var/lib/chat-cluster            # containerd root, kubelet root, pod logs, CNI IPAM
RUN_ROOT=/run/chat-cluster                 # containerd state and socket
CONTAINERD_SOCK="$RUN_ROOT/containerd/containerd.sock"
CGROUP_ROOT=chat-cluster                   # kubelet cgroupRoot (/chat-cluster in every v1 hierarchy)
HOSTPATH_PV_DIR=/tmp/hostpath_pv           # fixed in kube-controller-manager's hostPath provisioner
COREDNS_HEALTH=127.0.0.1:18080
COREDNS_READY=127.0.0.1:18181
KUBELET_PORT=10250
SCHEDULER_PORT="${E2E_SCHEDULER_PORT:-10259}"
NODE_OWNER_FILE=/run/chat-cluster.owner    # which state dir owns the node-level setup
# The system Python (a pyenv shim would hide the interpreter from the pid check).
PYTHON="$(if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3 || echo python3; fi)"
CHAIN_EGRESS=CHAT-CLUSTER-EGRESS           # mangle POSTROUTING
CHAIN_FORWARD=CHAT-CLUSTER-FORWARD         # mangle FORWARD
CHAIN_INPUT=CHAT-CLUSTER-INPUT             # mangle INPUT
# "TABLE CHAIN TARGET": the jumps to our chains, each to be the first rule of its built-in chain. All in
# mangle, which runs before filter and which neither kube-proxy nor kube-router writes to: kube-router
# moves its own jumps to the top of filter INPUT/FORWARD/OUTPUT on every sync.
OUR_JUMPS=("mangle POSTROUTING $CHAIN_EGRESS" "mangle FORWARD $CHAIN_FORWARD" "mangle INPUT $CHAIN_INPUT")
KUBE_ROUTER_HEALTH_PORT=20244              # kube-router /healthz (127.0.0.1 and the node address)
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
OUR_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)

# cidr_host CIDR N — the N-th address of an IPv4 CIDR (no carry beyond the last octet needed here).
cidr_host() {
  local net="${1%/*}" a b c d
  IFS=. read -r a b c d <<<"$net"
  echo "$a.$b.$c.$((d + $2))"
}
NODE_IP="$(cidr_host "$NODE_CIDR" 1)"
DNS_SERVICE_IP="$(cidr_host "${E2E_SERVICE_CIDR:-10.96.0.0/16}" 10)"

CONTROL_PLANE=(etcd kube-apiserver kube-controller-manager)
FULL=(etcd kube-apiserver hostpath-permissions kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-router coredns)
# Start order of every component this script may run; `down` stops in reverse.
ALL_COMPONENTS=("${FULL[@]}")


# First address of the service CIDR (the `kubernetes` Service's ClusterIP), IPv4 only.
first_service_ip() {
  local net="${SERVICE_CIDR%/*}" a b c d
  IFS=. read -r a b c d <<<"$net"
  echo "$a.$b.$c.$((d + 1))"
}

# render_template NAME — prints templates/NAME with every ${VAR} replaced by the value of the shell
# variable VAR (a global of settings.sh or a local of the caller). A placeholder whose variable is
# unset stops the script naming it, so a template and its caller cannot drift apart silently. Values
# are inserted verbatim (no quoting): callers pass paths, addresses, names and base64 only.
# shellcheck disable=SC2016 # the grep and sed patterns match a literal ${NAME}
render_template() {
  local file="$TEMPLATES/$1" text var
  text="$(cat "$file")" || e2e_die "template $file is not readable"
  while read -r var; do
    [[ -n "$var" ]] || continue
    [[ -n "${!var+set}" ]] || e2e_die "template $1: \${$var} has no value"
    text="${text//"\${$var}"/"${!var}"}"
  done < <(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$file" | sort -u | sed 's/^\${\(.*\)}$/\1/')
  printf '%s\n' "$text"
}
