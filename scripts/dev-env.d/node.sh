# shellcheck shell=bash
# Part of scripts/dev-env (sourced): the node (containerd and the kubelet), and the changes it
# makes to this machine, recorded and undone.

# ---------------------------------------------------------------------------------------------
# The node. What a kubelet and containerd would change on the machine is kept to the least:
# both run in a private mount namespace in which /var and /run are folders of the state dir (the
# paths a v1.20 kubelet and containerd 1.6 use whatever their configuration says: /var/log/pods,
# /var/lib/kubelet/device-plugins, /var/lib/cni, /run/containerd, /run/netns), so nothing lands
# in the machine's /var or /run and their mounts vanish with the namespace; the kubelet leaves
# iptables alone (makeIPTablesUtilChains: false; no kube-proxy); the CNI bridge is no gateway, so
# IP forwarding stays off. What remains is recorded in $CHANGES and undone by `down`:
#   - a bridge interface with the node's address, for the pods' network;
#   - a cgroup of the node's own in each cgroup hierarchy (the kubelet's cgroupRoot);
#   - the three sysctls the kubelet insists on (protectKernelDefaults makes it check, not set them).
# ---------------------------------------------------------------------------------------------
KUBELET_SYSCTLS=(vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1)

record() { printf '%s\n' "$*" >>"$CHANGES"; }
sysctl_path() { printf '/proc/sys/%s' "${1//.//}"; }

# Picks the first /24 of $POD_NETWORK_PREFIX.0.0/16 that nothing on the machine uses, and claims it
# by creating its bridge (the name is the claim: two environments cannot create the same one).
claim_pod_network() {
  local n
  for n in $(seq 0 254); do
    local subnet=$POD_NETWORK_PREFIX.$n
    ip -4 -o addr show | grep -q " inet $subnet\." && continue
    ip -4 route show | grep -q "^$subnet\." && continue
    if ip link add "mpdev$n" type bridge 2>/dev/null; then
      record "link mpdev$n"
      ip addr add "$subnet.1/24" dev "mpdev$n"
      ip link set "mpdev$n" up
      printf 'BRIDGE=mpdev%s\nSUBNET=%s\n' "$n" "$subnet" >"$NODE_DIR/network"
      return
    fi
  done
  die "no free /24 in $POD_NETWORK_PREFIX.0.0/16 for the node's pods; set DEV_ENV_POD_NETWORK_PREFIX"
}

# The kubelet's cgroupRoot, in every hierarchy, so its pods' cgroups stay apart from anything else's.
make_cgroup_root() {
  local hierarchy
  for hierarchy in $(awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/mounts); do
    mkdir "$hierarchy/$CGROUP_ROOT"
    record "cgroup $hierarchy/$CGROUP_ROOT"
    # A new cpuset cgroup (v1) has no CPUs or memory nodes until given its parent's.
    if [ -f "$hierarchy/cpuset.cpus" ] && [ -f "$hierarchy/$CGROUP_ROOT/cpuset.cpus" ]; then
      cat "$hierarchy/cpuset.cpus" >"$hierarchy/$CGROUP_ROOT/cpuset.cpus"
      cat "$hierarchy/cpuset.mems" >"$hierarchy/$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

set_kubelet_sysctls() {
  local setting
  for setting in "${KUBELET_SYSCTLS[@]}"; do
    local key=${setting%=*} value=${setting#*=} before
    before=$(cat "$(sysctl_path "$key")")
    [ "$before" = "$value" ] && continue
    record "sysctl $key $before"
    echo "$value" >"$(sysctl_path "$key")"
  done
}

# Says, before anything is done, what the node will change on this machine.
announce_node_changes() {
  local changes=() setting
  for setting in "${KUBELET_SYSCTLS[@]}"; do
    local key=${setting%=*} value=${setting#*=} before
    before=$(cat "$(sysctl_path "$key")")
    [ "$before" = "$value" ] || changes+=("$key $before -> $value")
  done
  say "the node changes this machine until 'scripts/dev-env down', which undoes it (record: $CHANGES):"
  say "  a bridge interface mpdevN with $POD_NETWORK_PREFIX.N.1/24 (the first free N) for the pods' network"
  say "  a cgroup $CGROUP_ROOT in each cgroup hierarchy, holding the pods"
  [ ${#changes[@]} -eq 0 ] || say "  sysctls the kubelet requires: ${changes[*]}"
  say "  nothing under /var, /run or /opt, no iptables rule, no IP forwarding (a private mount namespace, no gateway)"
}

# Undoes $CHANGES in reverse order. What cannot be undone stays recorded, for the next `down`,
# and the answer is a failure.
undo_machine_changes() {
  [ -f "$CHANGES" ] || return 0
  local kind target value left=()
  while read -r kind target value; do
    case $kind in
      link) if ip link show "$target" >/dev/null 2>&1 && ! ip link del "$target" 2>/dev/null; then left+=("$kind $target"); fi ;;
      cgroup) remove_cgroup "$target" || left+=("$kind $target") ;;
      sysctl) echo "$value" >"$(sysctl_path "$target")" || left+=("$kind $target $value") ;;
    esac
  done < <(tac "$CHANGES")
  if [ ${#left[@]} -eq 0 ]; then
    rm -f "$CHANGES"
    return 0
  fi
  printf '%s\n' "${left[@]}" | tac >"$CHANGES"
  say "could not undo, kept in $CHANGES for the next 'scripts/dev-env down': ${left[*]}"
  return 1
}

# Removes a cgroup, its children first. A pod's cgroups empty a moment after its containers stop,
# so it tries for a few seconds.
remove_cgroup() {
  local _
  for _ in $(seq 50); do
    [ -d "$1" ] || return 0
    find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.1
  done
  [ ! -d "$1" ]
}

write_containerd_config() {
  local cri='plugins."io.containerd.grpc.v1.cri"'
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
# Plugins that would write outside the state dir (opt installs into /opt) or that are not used.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCKET"
[$cri]
  sandbox_image = "$IMAGE_REGISTRY/pause:$IMAGE_TAG"
  # The machine's root lacks CAP_SYS_RESOURCE: asking for a negative oom_score_adj fails every sandbox.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [$cri.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [$cri.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [$cri.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [$cri.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
EOF
  mkdir -p "$NODE_DIR/cni"
  # Pods on the bridge reach the node's address (API server, moto) directly; the bridge is no
  # gateway, so nothing is forwarded beyond this machine.
  cat >"$NODE_DIR/cni/10-dev-env.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "dev-env", "plugins": [{
  "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "$SUBNET.0/24", "rangeStart": "$SUBNET.16", "gateway": "$SUBNET.1"}]],
           "routes": [{"dst": "0.0.0.0/0", "gw": "$SUBNET.1"}]}}]}
EOF
}

write_kubelet_config() {
  local kubelet_port=$1 healthz_port=$2
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $API_ADDRESS
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
# Only the API server (its client certificate from this CA) may call the kubelet.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE_DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /$CGROUP_ROOT
# Checks the sysctls (set, and recorded, by dev-env) instead of changing them unrecorded.
protectKernelDefaults: true
makeIPTablesUtilChains: false
failSwapOn: false
featureGates: {DevicePlugins: false}
volumePluginDir: $NODE_DIR/kubelet/volume-plugins
# Images are imported, never pulled: never collect them, and evict nothing for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
serializeImagePulls: false
# A v1.20 kubelet finishes a deleted pod whose container it has already removed only at its next
# sync ("Failed killing the pod ... NotFound" first): 10 s instead of the default minute, so that
# a pod deletion or a Recreate rollout takes seconds here (measured 7 s, was 22-62 s), as on a
# current kubelet.
syncFrequency: 10s
EOF
}

node_ready() {
  [ "$(kubectl --kubeconfig "$STATE_DIR/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}{.spec.taints}')" = True ]
}

# Imports OCI archives into the node's containerd (namespace k8s.io, where the kubelet looks).
import_images() {
  local archive
  for archive in "$@"; do
    ctr --address "$CONTAINERD_SOCKET" --namespace k8s.io images import "$archive" >/dev/null \
      || die "containerd refused to import $archive"
  done
}

start_node() {
  case $STATE_DIR in /var/* | /run/*) die "the state dir $STATE_DIR must not be under /var or /run (the node mounts its own there); set DEV_ENV_DIR" ;; esac
  mkdir -p "$NODE_DIR"/{ns-var/lib,ns-var/log,ns-run,kubelet,images}
  ln -sfn /run "$NODE_DIR/ns-var/run"
  write_containerd_config
  make_cgroup_root
  set_kubelet_sysctls

  say "starting containerd (socket $CONTAINERD_SOCKET)"
  # The mount namespace lives as long as containerd, its shims and the kubelet (which joins it).
  start containerd unshare --mount --propagation private sh -c \
    'mount -n --bind "$1" /var && mount -n --bind "$2" /run && exec containerd --config "$3"' \
    sh "$NODE_DIR/ns-var" "$NODE_DIR/ns-run" "$NODE_DIR/containerd.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCKET" version
  "$REPO/scripts/build-images" pause "$NODE_DIR/images"
  import_images "$NODE_DIR/images/pause.tar"

  local kubelet_port healthz_port
  kubelet_port=$(free_port "$API_ADDRESS"); healthz_port=$(free_port)
  write_kubelet_config "$kubelet_port" "$healthz_port"
  write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet
  say "starting kubelet $K8S_VERSION as node $NODE_NAME ($API_ADDRESS:$kubelet_port)"
  start kubelet nsenter --mount="/proc/$(pid_of containerd)/ns/mnt" -- "$KUBE_BIN/kubelet" \
    --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$CONTAINERD_SOCKET" \
    --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$API_ADDRESS"
  # Ready, and without the not-ready taint the node lifecycle controller removes.
  wait_for kubelet 90 node_ready
}

# Kills every container of the node and deletes it (so that its shim exits), before containerd stops.
stop_containers() {
  is_running containerd || return 0
  local ctr=(ctr --address "$CONTAINERD_SOCKET" --namespace k8s.io) id
  for id in $("${ctr[@]}" tasks list -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $("${ctr[@]}" containers list -q 2>/dev/null); do
    for _ in $(seq 50); do "${ctr[@]}" tasks delete "$id" >/dev/null 2>&1 && break; "${ctr[@]}" tasks list -q | grep -qx "$id" || break; sleep 0.1; done
    "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

load_network() {
  # shellcheck source=/dev/null
  [ -f "$NODE_DIR/network" ] && . "$NODE_DIR/network"
  CONTAINERD_SOCKET=$NODE_DIR/containerd.sock
  CGROUP_ROOT=metrics-pipeline-${BRIDGE:-mpdevN}
}
