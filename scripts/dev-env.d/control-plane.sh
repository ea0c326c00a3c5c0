# shellcheck shell=bash
# Part of scripts/dev-env (sourced): the control plane's certificates and kubeconfig, the
# identities and the env file the tests source, the AWS proxy, and the readiness checks.

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the environment's CA.
sign() {
  local name=$1 subject=$2 extensions=$3
  openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  # Extensions make these X.509 v3 certificates: rustls (kube's TLS) refuses v1.
  printf '%s\n' "$extensions" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

make_certificates() {
  local pki=$STATE_DIR/pki
  mkdir -p "$pki"
  (
    cd "$pki" || exit
    # Made whole or not at all: a folder from an older dev-env lacks the node's certificates.
    if [ ! -f ca.crt ] || [ ! -f apiserver-kubelet-client.crt ] || [ ! -f kubelet.crt ]; then
      rm -f ./*.crt ./*.key ./*.srl
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dev-env-ca" -keyout ca.key -out ca.crt 2>/dev/null
      sign admin "/O=system:masters/CN=dev-env-admin" 'extendedKeyUsage=clientAuth'
      # The API server's client certificate towards the kubelet (logs, exec).
      sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" 'extendedKeyUsage=clientAuth'
      # The kubelet's identity, which the Node authorizer limits to this node's pods.
      sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" 'extendedKeyUsage=clientAuth'
      openssl genrsa -out service-accounts.key 2048 2>/dev/null
      openssl rsa -in service-accounts.key -pubout -out service-accounts.pub 2>/dev/null
    fi
    # Issued on every start: the address pods reach the API server on is chosen then.
    sign serving "/CN=kube-apiserver" "subjectAltName=IP:$API_ADDRESS,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
  )
}

# write_kubeconfig FILE CERT: a kubeconfig for the API server with the client certificate CERT.
write_kubeconfig() {
  local file=$1 cert=$2 pki=$STATE_DIR/pki
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dev-env
  cluster:
    server: https://$API_ADDRESS:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $cert
  user:
    client-certificate: $pki/$cert.crt
    client-key: $pki/$cert.key
contexts:
- name: dev-env
  context: {cluster: dev-env, user: $cert, namespace: default}
current-context: dev-env
EOF
}

# The identities scripts/aws-identities made, or any key for a moto that checks none.
credentials() {
  if [ -f "$STATE_DIR/identities" ]; then cat "$STATE_DIR/identities"; else
    printf 'export AWS_ACCESS_KEY_ID=testing\nexport AWS_SECRET_ACCESS_KEY=testing\n'; fi
}

# write_env_file ENDPOINT: the environment tests and programs use; ENDPOINT is moto or the proxy.
write_env_file() {
  cat >"$STATE_DIR/env" <<EOF
# Written by scripts/dev-env up; source it: . $STATE_DIR/env
export KUBECONFIG=$STATE_DIR/kubeconfig
export AWS_ENDPOINT_URL=$1
export AWS_EMULATOR_URL=$(cat "$STATE_DIR/moto.url")
# kinesis-mock, for the tests on this host (not on the node's address), and the Pythons of the KPL
# library and of Helm's SDK.
export KINESIS_MOCK_URL=$(cat "$STATE_DIR/kinesis-mock.url")
export KPL_PYTHON=$(venv_path kpl "${KPL_PACKAGES[@]}")/bin/python
export HELM_PYTHON=$(venv_path helm "${HELM_PACKAGES[@]}")/bin/python
$(credentials)
export AWS_REGION=$AWS_TEST_REGION
export AWS_DEFAULT_REGION=$AWS_TEST_REGION
export DEV_ENV_STATE=$STATE_DIR
EOF
  if [ "$NODE_ENABLED" != off ]; then
    cat >>"$STATE_DIR/env" <<EOF
# The images \`scripts/dev-env images\` builds and imports into the node.
export METRICS_PIPELINE_IMAGE_REGISTRY=$IMAGE_REGISTRY
export METRICS_PIPELINE_IMAGE_TAG=$IMAGE_TAG
export CONTAINERD_ADDRESS=$CONTAINERD_SOCKET
EOF
  fi
}

# Starts the AWS proxy in front of moto with $AWS_FAULTS (stopping a running one first) and points
# AWS_ENDPOINT_URL at it, on moto's address so that pods reach it too. Its control endpoint is
# $AWS_ENDPOINT_URL/_proxy/ (see aws-proxy/).
start_proxy() {
  [ -x "$PROXY_BIN" ] || die "$PROXY_BIN is not built: cargo build --workspace --all-targets (scripts/test does), or set AWS_PROXY_BIN"
  is_running moto || die "moto is not running: scripts/dev-env up"
  stop "$PROXY" || true
  local moto_url address port
  moto_url=$(cat "$STATE_DIR/moto.url")
  address=${moto_url#http://}; address=${address%:*}
  port=$(free_port "$address")
  say "starting the AWS proxy on $address:$port in front of moto, faults: ${AWS_FAULTS:-none}"
  # Its own calls to moto (the stream lookup before an UpdateShardCount) are the tests'.
  # shellcheck source=/dev/null
  [ ! -f "$STATE_DIR/identities" ] || . "$STATE_DIR/identities"
  start "$PROXY" "$PROXY_BIN" --upstream "$moto_url" --listen "$address:$port" --faults "${AWS_FAULTS:-}"
  wait_for "$PROXY" 30 curl -sf "http://$address:$port/_proxy/faults"
  load_network
  write_env_file "http://$address:$port"
}

# With `up`: the proxy when AWS_FAULTS asks for it and the test build has made it.
maybe_start_proxy() {
  [ -n "${AWS_FAULTS+set}" ] || return 0
  if [ -x "$PROXY_BIN" ]; then
    start_proxy
  else
    say "AWS_FAULTS is set but $PROXY_BIN is not built yet: scripts/test starts the proxy after its build (or run scripts/dev-env proxy once built)"
  fi
}

# kinesis_mock_ready URL: ListStreams answers 200 (it refuses requests that are not SigV4-signed;
# any key will do).
kinesis_mock_ready() {
  curl -sf -X POST -H 'X-Amz-Target: Kinesis_20131202.ListStreams' -H 'Content-Type: application/x-amz-json-1.1' \
    --aws-sigv4 "aws:amz:$AWS_TEST_REGION:kinesis" --user dev-env:dev-env -d '{}' "$1/"
}

apiserver_ready() {
  local pki=$STATE_DIR/pki
  curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://$API_ADDRESS:$APISERVER_PORT/readyz"
}

all_running() { for s in "${SERVICES[@]}"; do is_running "$s" || return 1; done; }
