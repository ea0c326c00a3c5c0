# shellcheck shell=bash
# shellcheck disable=SC2034 # sets what scripts/dev-env uses (MOTO_SERVER, QUERY_PYTHON, ...)
# Part of scripts/dev-env (sourced): messages, and what the environment installs when it is
# missing (Debian packages, moto, kinesis-mock, the query engine, AWS Labs' KPL library, the
# Kubernetes programs).

say() { printf '[dev-env] %s\n' "$*" >&2; }
die() { printf '[dev-env] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $* (install it yourself, then run this again)"; fi
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "missing $*; this script installs with apt-get (Debian/Ubuntu); install them yourself"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_packages() {
  local missing=()
  [ -x /usr/bin/etcd ] || command -v etcd >/dev/null || missing+=(etcd-server)
  command -v jq >/dev/null || missing+=(jq)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  # kinesis-mock is a Node.js program, installed with npm.
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  # The chart test renders the Helm chart with Go's text/template and sprig (tests/chart/render.go).
  command -v go >/dev/null || missing+=(golang-go)
  local gocode=/usr/share/gocode/src
  [ -d $gocode/github.com/Masterminds/sprig ] || missing+=(golang-github-masterminds-sprig-dev)
  [ -d $gocode/github.com/xeipuuv/gojsonschema ] || missing+=(golang-github-xeipuuv-gojsonschema-dev)
  [ -d $gocode/gopkg.in/yaml.v3 ] || missing+=(golang-gopkg-yaml.v3-dev)
  # promtool, which tests the alert rules the chart ships (tests/alerts/).
  command -v promtool >/dev/null || missing+=(prometheus)
  if [ "$NODE_ENABLED" != off ]; then
    # The node: container runtime, CNI plugins, and what scripts/build-images uses (cc for the
    # static pause program, objcopy and ldd for the program images).
    command -v containerd >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
    command -v cc >/dev/null || missing+=(gcc)
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
    command -v objcopy >/dev/null || missing+=(binutils)
    command -v unshare >/dev/null || missing+=(util-linux)
    # A shell for `kubectl exec` into images that have none (tests/tests/e2e/node.rs mounts it).
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v ip >/dev/null || missing+=(iproute2)
  fi
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

ensure_moto() {
  local venv=$CACHE_DIR/moto-$MOTO_VERSION
  if [ ! -x "$venv/bin/moto_server" ]; then
    say "installing moto[server]==$MOTO_VERSION into $venv"
    python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
      || die "pip could not install moto[server]==$MOTO_VERSION into $venv"
  fi
  MOTO_SERVER=$venv/bin/moto_server
  MOTO_PYTHON=$venv/bin/python
}

ensure_query_engine() {
  local venv
  venv=$CACHE_DIR/query-$(printf '%s-' "${QUERY_PACKAGES[@]}" | sed 's/==/-/g; s/-$//')
  if [ ! -f "$venv/installed" ]; then
    say "installing ${QUERY_PACKAGES[*]} into $venv (scripts/query)"
    rm -rf "$venv"
    python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check "${QUERY_PACKAGES[@]}" \
      || die "pip could not install ${QUERY_PACKAGES[*]} into $venv"
    touch "$venv/installed"
  fi
  QUERY_PYTHON=$venv/bin/python
}

# Sets KINESIS_MOCK_DIR to kinesis-local's package folder (main.js, and server.json, its TLS
# certificate, which it reads from the current folder).
ensure_kinesis_mock() {
  local prefix=$CACHE_DIR/kinesis-mock-$KINESIS_MOCK_VERSION
  if [ ! -f "$prefix/installed" ]; then
    say "installing kinesis-local@$KINESIS_MOCK_VERSION (kinesis-mock) with npm into $prefix"
    rm -rf "$prefix"
    mkdir -p "$prefix"
    # --prefix: into this folder, never a package.json npm would find further up.
    npm install --prefix "$prefix" --no-audit --no-fund "kinesis-local@$KINESIS_MOCK_VERSION" >/dev/null \
      || die "npm could not install kinesis-local@$KINESIS_MOCK_VERSION into $prefix"
    touch "$prefix/installed"
  fi
  KINESIS_MOCK_DIR=$prefix/node_modules/kinesis-local
}

kpl_venv() { echo "$CACHE_DIR/kpl-$(printf '%s-' "${KPL_PACKAGES[@]}" | sed 's/==/-/g; s/-$//')"; }

ensure_kpl_library() {
  local venv
  venv=$(kpl_venv)
  if [ ! -f "$venv/installed" ]; then
    say "installing ${KPL_PACKAGES[*]} into $venv (\$KPL_PYTHON, for the tests)"
    rm -rf "$venv"
    python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check "${KPL_PACKAGES[@]}" \
      || die "pip could not install ${KPL_PACKAGES[*]} into $venv"
    touch "$venv/installed"
  fi
}

# Sets KUBE_BIN to a folder holding the Kubernetes programs this environment runs.
ensure_kube_binaries() {
  local programs=(kube-apiserver kube-controller-manager) program
  [ "$NODE_ENABLED" = off ] || programs+=(kube-scheduler kubelet)
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    for program in "${programs[@]}"; do
      [ -x "$KUBEBUILDER_ASSETS/$program" ] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no $program"
    done
    KUBE_BIN=$(cd "$KUBEBUILDER_ASSETS" && pwd)
    return
  fi
  KUBE_BIN=$CACHE_DIR/k8s/$K8S_VERSION
  for program in "${programs[@]}"; do
    if [ ! -x "$KUBE_BIN/$program" ]; then
      say "KUBEBUILDER_ASSETS is not set and $KUBE_BIN has no $program: building Kubernetes $K8S_VERSION from Debian's source package (15-40 minutes, once)"
      "$REPO/scripts/build-kube-binaries" "$KUBE_BIN"
      return
    fi
  done
}
