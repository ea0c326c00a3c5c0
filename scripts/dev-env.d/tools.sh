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

# The folder of the virtualenv NAME holding PACKAGES: one per set of versions.
venv_path() {
  local name=$1
  shift
  echo "$CACHE_DIR/$name-$(printf '%s-' "$@" | sed 's/==/-/g; s/-$//')"
}

# Installs PACKAGES into the virtualenv NAME (for WHAT) unless it holds them; prints its folder.
ensure_venv() {
  local name=$1 what=$2 venv
  shift 2
  venv=$(venv_path "$name" "$@")
  if [ ! -f "$venv/installed" ]; then
    say "installing $* into $venv ($what)"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || { apt_install python3-venv; python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install -q --disable-pip-version-check "$@" >&2 || die "pip could not install $* into $venv"
    touch "$venv/installed"
  fi
  echo "$venv"
}

ensure_query_engine() {
  QUERY_PYTHON=$(ensure_venv query "scripts/query" "${QUERY_PACKAGES[@]}")/bin/python
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

# The tests' own Python tools: AWS Labs' KPL aggregation library, and Helm's SDK.
ensure_test_tools() {
  ensure_venv kpl "\$KPL_PYTHON, for the tests" "${KPL_PACKAGES[@]}" >/dev/null
  ensure_venv helm "\$HELM_PYTHON: Helm's own SDK, for the chart tests" "${HELM_PACKAGES[@]}" >/dev/null
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
