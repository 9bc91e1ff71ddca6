# shellcheck shell=bash
# e2e/cluster.d/pki.sh — the cluster's PKI and kubeconfigs: a fresh CA, front-proxy CA, serving and
# client certificates and the service-account key pair on every fresh start (openssl, RSA 2048, into
# certs/), and self-contained kubeconfigs (templates/kubeconfig.yaml). Sourced by e2e/cluster.

# pki_key NAME
# openssl's messages go to certs/openssl.log; any failure stops `up` with the log's tail.
pki_die() { tail -n 5 "$CERTS/openssl.log" >&2 || true; e2e_die "certificate generation failed: $*"; }
pki_key() {
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$CERTS/$1.key" 2>>"$CERTS/openssl.log" || pki_die "key $1"
  chmod 600 "$CERTS/$1.key"
}

# pki_ca NAME CN
pki_ca() {
  pki_key "$1"
  openssl req -x509 -new -sha256 -key "$CERTS/$1.key" -subj "/CN=$2" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -out "$CERTS/$1.crt" 2>>"$CERTS/openssl.log" || pki_die "CA $1"
}

# pki_cert CA NAME SUBJECT USAGE [SANS] — USAGE is serverAuth, clientAuth or "serverAuth,clientAuth".
pki_cert() {
  local ca="$1" name="$2" subj="$3" usage="$4" sans="${5:-}" ext="$CERTS/$2.ext"
  pki_key "$name"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -z "$sans" ]] || echo "subjectAltName=$sans"
  } >"$ext"
  openssl req -new -sha256 -key "$CERTS/$name.key" -subj "$subj" 2>>"$CERTS/openssl.log" |
    openssl x509 -req -sha256 -days 365 -CA "$CERTS/$ca.crt" -CAkey "$CERTS/$ca.key" \
      -CAcreateserial -CAserial "$CERTS/$ca.srl" -extfile "$ext" -out "$CERTS/$name.crt" 2>>"$CERTS/openssl.log" ||
    pki_die "certificate $name (subject $subj, SANs ${sans:-none})"
  rm -f "$ext"
}


gen_pki() {
  rm -rf "$CERTS"; mkdir -p "$CERTS"; chmod 700 "$CERTS"
  local svc_ip advertise_san=""; svc_ip="$(first_service_ip)"
  [[ "$APISERVER_ADVERTISE" == 127.0.0.1 ]] || advertise_san=",IP:$APISERVER_ADVERTISE"
  pki_ca ca "chat-cluster-e2e-ca"
  pki_ca front-proxy-ca "chat-cluster-e2e-front-proxy-ca"
  pki_cert ca apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:$svc_ip${advertise_san},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  pki_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  pki_cert ca admin "/O=system:masters/CN=kubernetes-admin" clientAuth
  pki_cert ca controller-manager "/CN=system:kube-controller-manager" clientAuth
  pki_cert ca controller-manager-serving "/CN=kube-controller-manager" serverAuth "IP:127.0.0.1,DNS:localhost"
  pki_cert ca scheduler "/CN=system:kube-scheduler" clientAuth
  if [[ "$MODE" == full ]]; then
    pki_cert ca scheduler-serving "/CN=kube-scheduler" serverAuth "IP:127.0.0.1,DNS:localhost"
    pki_cert ca kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    pki_cert ca kubelet-serving "/CN=system:node:$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
    pki_cert ca kube-proxy "/CN=system:kube-proxy" clientAuth
    pki_cert ca coredns "/CN=system:coredns" clientAuth
    pki_cert ca kube-router "/CN=system:kube-router" clientAuth
  fi
  pki_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" clientAuth
  pki_key sa
  openssl pkey -in "$CERTS/sa.key" -pubout -out "$CERTS/sa.pub" 2>>"$CERTS/openssl.log" || pki_die "sa.pub"
}

# write_kubeconfig FILE USER CERTNAME — self-contained (certs embedded) kubeconfig for APISERVER_URL.
# write_kubeconfig FILE USER CERTNAME — self-contained (certs embedded) kubeconfig for APISERVER_URL,
# mode 600 (templates/kubeconfig.yaml).
# shellcheck disable=SC2034 # USER_NAME and the *_DATA are read by render_template
write_kubeconfig() {
  local file="$1" USER_NAME="$2" cert="$3" CA_DATA CERT_DATA KEY_DATA
  CA_DATA="$(base64 -w0 "$CERTS/ca.crt")"
  CERT_DATA="$(base64 -w0 "$CERTS/$cert.crt")"
  KEY_DATA="$(base64 -w0 "$CERTS/$cert.key")"
  (umask 077; : >"$file.tmp")
  render_template kubeconfig.yaml >"$file.tmp"
  mv -f "$file.tmp" "$file"
}
