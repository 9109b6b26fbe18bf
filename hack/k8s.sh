#!/usr/bin/env bash
# A real one-node Kubernetes on this machine: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd + runc, kubelet, kube-proxy (iptables) and CoreDNS, all run directly on the host (no node image, no
# registry) inside one network namespace and one mount namespace that this script creates.
#
# Usage:
#   hack/k8s.sh up        start it (a no-op when up); prints the kubeconfig path
#   hack/k8s.sh down      stop every process of it and remove what it made: namespaces, cgroups, state
#   hack/k8s.sh status    exit 0 when up and the node is Ready
#   hack/k8s.sh exec CMD  run CMD in the cluster's network namespace with KUBECONFIG set (kubectl, helm, ...)
#   hack/k8s.sh load TAR... import image archives (`docker save` or OCI) into the node's containerd, each once
#   hack/k8s.sh leftovers print anything of this cluster still present (processes, cgroups); exit 1 if any
#
# Isolation. One holder process (`unshare --net --mount`) owns a network namespace and a mount namespace; every
# component runs in both (nsenter). The network namespace has loopback, a dummy link holding the node address
# (10.250.0.1) and, once pods run, the CNI bridge cni0 (pods 10.244.0.0/24, services 10.96.0.0/16); its default
# route is `unreachable`, and it has no link to the host: traffic from the cluster reaches its own loopback, pods,
# services and node address, and nothing else. kube-proxy's iptables rules live there, not in the host's tables.
# The mount namespace is private: tmpfs over /run and /var/lib/cni (containerd's shim sockets, runc state, pod
# network namespaces, CNI cache), and the three kernel settings kubelet would otherwise write host-wide
# (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops) are shadowed by files there. When the last process
# exits, the kernel drops both namespaces and every mount in them. Pod cgroups live under /stampede-<id>, removed
# by `down`. Ports are the namespace's own, so the fixed ports below clash with nothing on the host.
#
# The control plane's components authenticate with the admin certificate (system:masters); the kubelet serves
# with a self-signed certificate and anonymous, always-allowed access: a disposable test cluster reachable only
# from inside its own network namespace. CoreDNS runs on the node (not as a pod) at the node address.
#
# Needs root, util-linux, iproute2 and Debian's containerd, runc, containernetworking-plugins, iptables and
# conntrack (installed with apt-get when missing); binaries from hack/tools.sh (`node`: kubelet,
# kube-controller-manager, kube-scheduler, kube-proxy, coredns; plus etcd, kube-apiserver, kubectl).
#
# Environment: STAMPEDE_K8S_DIR (default <repo>/.run/k8s), STAMPEDE_K8S_TIMEOUT (seconds, default 300).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${STAMPEDE_K8S_DIR:-$ROOT/.run/k8s}"
TIMEOUT="${STAMPEDE_K8S_TIMEOUT:-300}"
ID="$(printf '%s' "$RUN_DIR" | sha1sum | cut -c1-10)"
HOLDER_NAME="stampede-k8s-$ID" # argv[0] of the holder process
CGROUP="stampede-$ID"
NODE_NAME=stampede-node
NODE_IP=10.250.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
APISERVER_PORT=6443
PAUSE_IMAGE=stampede.local/pause:1
PKI="$RUN_DIR/pki"
LOGS="$RUN_DIR/logs"
KUBECONFIG_PATH="$RUN_DIR/kubeconfig"
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns)
PACKAGES=(containerd runc containernetworking-plugins iptables conntrack)

# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

tool() { "$ROOT/hack/tools.sh" path "$1" 9>&-; }

# The holder's PID when it runs (its pid file names a live process whose argv[0] is this cluster's name).
holder_pid() {
    local pid
    [[ -f "$RUN_DIR/holder.pid" ]] || return 1
    pid="$(<"$RUN_DIR/holder.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)" == "$HOLDER_NAME" ]] || return 1
    printf '%s\n' "$pid"
}

# Run "$@" in the cluster's network and mount namespaces.
in_ns() { nsenter --target "$HOLDER" --net --mount -- "$@"; }
# Run "$@" in the cluster's network namespace only (the host's files, the cluster's addresses).
in_net() { nsenter --target "$HOLDER" --net -- "$@"; }

# Every process of the cluster: those in its mount namespace (the components and containerd's shims) and those in
# its cgroups (the containers).
cluster_pids() {
    local mnt dir
    [[ -f "$RUN_DIR/mntns" ]] && mnt="$(<"$RUN_DIR/mntns")" || mnt=""
    {
        if [[ -n "$mnt" ]]; then # one find, not a readlink per process (a busy host has hundreds)
            mnt="${mnt//[/\\[}"
            find /proc/[0-9]*/ns/mnt -maxdepth 0 -lname "${mnt//]/\\]}" 2>/dev/null | cut -d/ -f3 || true
        fi
        while read -r dir; do
            if [[ -d "$dir$CGROUP" ]]; then find "$dir$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
        done < <(cgroup_roots)
    } | sort -un
}

write_configs() {
    mkdir -p "$RUN_DIR/cni" "$RUN_DIR/sysctl" "$RUN_DIR/pod-logs"
    write_kubeconfig "$KUBECONFIG_PATH" "https://127.0.0.1:$APISERVER_PORT" stampede-k8s "$PKI"

    cat >"$RUN_DIR/containerd.toml" <<EOF
version = 2
root = "$RUN_DIR/containerd/root"
state = "$RUN_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  # Lowering a process's OOM score needs CAP_SYS_RESOURCE, which a sandboxed host may not grant: containers get no
  # lower score than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN_DIR/cni"
EOF

    # No masquerade: pod traffic never leaves the namespace. Hairpin: a pod reaches itself through its Service.
    cat >"$RUN_DIR/cni/10-stampede.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "stampede",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$RUN_DIR/cni-ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

    cat >"$RUN_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
failSwapOn: false
podLogsDir: $RUN_DIR/pod-logs
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
resolvConf: $RUN_DIR/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
maxPods: 60
EOF
    # The upstream of pods with dnsPolicy Default: the cluster's own DNS (there is no other).
    printf 'nameserver %s\n' "$NODE_IP" >"$RUN_DIR/resolv.conf"

    cat >"$RUN_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_PATH}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $CLUSTER_CIDR
nodePortAddresses: [$NODE_IP/32]
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Host-wide conntrack limits are left alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

    cat >"$RUN_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:8080
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_PATH stampede-k8s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF

    # What kubelet checks and would otherwise set host-wide: already its values, in this mount namespace only.
    printf '1\n' >"$RUN_DIR/sysctl/overcommit_memory"
    printf '10\n' >"$RUN_DIR/sysctl/panic"
    printf '1\n' >"$RUN_DIR/sysctl/panic_on_oops"
}

# The holder: new network and mount namespaces, kept by a sleeping process named after this cluster.
start_holder() {
    rm -f "$RUN_DIR/holder.pid"
    setsid unshare --net --mount --propagation private -- \
        bash -c 'echo $$ >"$1"; exec -a "$2" sleep infinity' holder "$RUN_DIR/holder.pid" "$HOLDER_NAME" \
        </dev/null >/dev/null 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        HOLDER="$(holder_pid)" && break
        sleep 0.1
    done
    [[ -n "${HOLDER:-}" ]] || die "the namespace holder did not start"
    readlink "/proc/$HOLDER/ns/mnt" >"$RUN_DIR/mntns"

    in_ns sh -euc "
        mount -t tmpfs -o mode=755 tmpfs /run
        mkdir -p /run/netns /run/containerd
        if [ -d /var/lib/cni ]; then mount -t tmpfs tmpfs /var/lib/cni; fi
        mount --bind '$RUN_DIR/sysctl/overcommit_memory' /proc/sys/vm/overcommit_memory
        mount --bind '$RUN_DIR/sysctl/panic' /proc/sys/kernel/panic
        mount --bind '$RUN_DIR/sysctl/panic_on_oops' /proc/sys/kernel/panic_on_oops
    "
    # /var/lib/cni is where the CNI library caches results; when the host has none, /var/lib gets an overlay in the
    # namespace (writes go to the run folder), so nothing is created on the host.
    if [[ ! -d /var/lib/cni ]]; then
        mkdir -p "$RUN_DIR/varlib/upper" "$RUN_DIR/varlib/work"
        in_ns sh -euc "
            mount -t overlay overlay -o lowerdir=/var/lib,upperdir='$RUN_DIR/varlib/upper',workdir='$RUN_DIR/varlib/work' /var/lib
            mkdir -p /var/lib/cni
        "
    fi

    in_net sh -euc "
        ip link set lo up
        ip addr add $NODE_IP/32 dev lo
        ip route add unreachable default
        sysctl -qw net.ipv4.ip_forward=1
        if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then sysctl -qw net.bridge.bridge-nf-call-iptables=1; fi
    "
}

# start_in_ns NAME CMD...: start_daemon in the cluster's network and mount namespaces.
start_in_ns() {
    local name="$1"
    shift
    start_daemon "$name" nsenter --target "$HOLDER" --net --mount -- "$@"
}

kubectl_ns() { in_net env KUBECONFIG="$KUBECONFIG_PATH" "$KUBECTL" "$@"; }
etcd_healthy() { in_net curl -fsS --max-time 2 http://127.0.0.1:2379/health | grep -q '"health":"true"'; }
apiserver_ready() { [[ "$(kubectl_ns get --raw /readyz 2>/dev/null)" == ok ]]; }
containerd_ready() { [[ -S "$CONTAINERD_SOCK" ]] && in_ns ctr --address "$CONTAINERD_SOCK" version; }
node_ready() {
    [[ "$(kubectl_ns get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
coredns_ready() { in_net curl -fsS --max-time 2 http://127.0.0.1:8080/health; }

# The pause image (the pod sandbox): pause.c built statically, packed by image_archive.py; cached by source hash.
pause_archive() {
    local cache hash out
    cache="${STAMPEDE_TOOLS_DIR:-$ROOT/.tools}/images"
    hash="$(sha256sum "$ROOT/hack/pause/pause.c" "$ROOT/hack/image_archive.py" | sha256sum | cut -c1-12)"
    out="$cache/pause-$hash.tar"
    if [[ ! -f "$out" ]]; then
        mkdir -p "$cache"
        command -v gcc >/dev/null || die "gcc is needed to build the pause binary (Debian: build-essential)"
        gcc -Os -static -o "$cache/pause-$hash.bin" "$ROOT/hack/pause/pause.c" || die "building pause failed"
        python3 "$ROOT/hack/image_archive.py" "$out.tmp" "$PAUSE_IMAGE" \
            --file "$cache/pause-$hash.bin=/pause" --entrypoint /pause >/dev/null
        rm -f "$cache/pause-$hash.bin"
        mv "$out.tmp" "$out"
    fi
    printf '%s\n' "$out"
}

cmd_up() {
    [[ "$(id -u)" == 0 ]] || die "a real cluster needs root (namespaces, cgroups, containerd)"
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    flock 9
    KUBECTL="$(tool kubectl)"
    if HOLDER="$(holder_pid)" && node_ready 2>/dev/null; then
        log "cluster already up"
        printf '%s\n' "$KUBECONFIG_PATH"
        return
    fi
    [[ -f "$RUN_DIR/holder.pid" ]] && stop_all
    install_packages "${PACKAGES[@]}"
    local etcd apiserver cm scheduler kubelet proxy coredns pause
    etcd="$(tool etcd)"
    apiserver="$(tool kube-apiserver)"
    cm="$(tool kube-controller-manager)"
    scheduler="$(tool kube-scheduler)"
    kubelet="$(tool kubelet)"
    proxy="$(tool kube-proxy)"
    coredns="$(tool coredns)"
    pause="$(pause_archive)"
    make_pki "$PKI" stampede-k8s-ca "IP:$NODE_IP, IP:$KUBERNETES_SERVICE_IP"

    local start deadline
    start="$(now_ms)"
    deadline=$((start + TIMEOUT * 1000))
    rm -rf "$RUN_DIR/etcd" "$RUN_DIR/containerd" "$RUN_DIR/kubelet" "$RUN_DIR/cni-ipam" "$RUN_DIR/pod-logs" "$LOGS"
    mkdir -p "$LOGS" "$RUN_DIR/kubelet"
    mkdir -m 700 "$RUN_DIR/etcd"
    write_configs
    start_holder
    make_cgroup "$CGROUP"

    log "starting etcd and kube-apiserver (https://$NODE_IP:$APISERVER_PORT in the cluster's network namespace)"
    start_in_ns etcd "$etcd" --name=stampede --data-dir="$RUN_DIR/etcd" \
        --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
        --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
        --initial-cluster=stampede=http://127.0.0.1:2380 --initial-cluster-state=new \
        --unsafe-no-fsync --log-level=warn
    start_in_ns containerd containerd --config "$RUN_DIR/containerd.toml"
    wait_until etcd "$deadline" etcd_healthy
    start_in_ns kube-apiserver "$apiserver" \
        --etcd-servers=http://127.0.0.1:2379 \
        --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
        --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC \
        --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
        --kubelet-preferred-address-types=InternalIP \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --allow-privileged=true --profiling=false
    wait_until containerd "$deadline" containerd_ready
    in_ns ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$pause" >/dev/null ||
        fail_start containerd "importing the pause image failed"
    wait_until kube-apiserver "$deadline" apiserver_ready

    log "starting kube-controller-manager, kube-scheduler, kubelet, kube-proxy, coredns"
    start_in_ns kube-controller-manager "$cm" --kubeconfig="$KUBECONFIG_PATH" \
        --authentication-kubeconfig="$KUBECONFIG_PATH" --authorization-kubeconfig="$KUBECONFIG_PATH" \
        --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
    start_in_ns kube-scheduler "$scheduler" --kubeconfig="$KUBECONFIG_PATH" \
        --authentication-kubeconfig="$KUBECONFIG_PATH" --authorization-kubeconfig="$KUBECONFIG_PATH" \
        --bind-address=127.0.0.1 --leader-elect=false --profiling=false
    start_in_ns kubelet "$kubelet" --config="$RUN_DIR/kubelet.yaml" --kubeconfig="$KUBECONFIG_PATH" \
        --root-dir="$RUN_DIR/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
    start_in_ns kube-proxy "$proxy" --config="$RUN_DIR/kube-proxy.yaml"
    start_in_ns coredns "$coredns" -conf "$RUN_DIR/Corefile"
    wait_until kubelet "$deadline" node_ready
    wait_until coredns "$deadline" coredns_ready
    local ms=$(($(now_ms) - start))
    log "cluster ready in $((ms / 1000)).$((ms % 1000 / 100))s (node $NODE_NAME, $NODE_IP)"
    printf '%s\n' "$KUBECONFIG_PATH"
}

# Stop every process of the cluster (components in reverse order, then whatever is left), then remove cgroups.
stop_all() {
    local i pid pids daemon_pids=()
    HOLDER="$(holder_pid || true)"
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        if pid="$(running_pid "${DAEMONS[$i]}")"; then
            daemon_pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for ((i = 0; i < 50; i++)); do # 5 s for a graceful stop (kill -0 is a builtin: no process per check)
        pids=""
        for pid in "${daemon_pids[@]}"; do kill -0 "$pid" 2>/dev/null && pids+=" $pid"; done
        [[ -z "$pids" ]] && break
        sleep 0.1
    done
    # Containers, shims and anything still running in the namespaces; the holder last.
    for ((i = 0; i < 30; i++)); do
        pids="$(cluster_pids | grep -vx "${HOLDER:-0}" || true)"
        [[ -z "$pids" ]] && break
        # shellcheck disable=SC2086 # a list of PIDs
        kill -KILL $pids 2>/dev/null || true
        sleep 0.2
    done
    if [[ -n "${HOLDER:-}" ]]; then
        kill -KILL "$HOLDER" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$HOLDER" 2>/dev/null || break
            sleep 0.1
        done
    fi
    for name in "${DAEMONS[@]}"; do rm -f "$(pid_file "$name")"; done
    rm -f "$RUN_DIR/holder.pid"
    remove_cgroup "$CGROUP"
}

cmd_down() {
    mkdir -p "$RUN_DIR"
    stop_all
    rm -rf "$RUN_DIR/etcd" "$RUN_DIR/containerd" "$RUN_DIR/kubelet" "$RUN_DIR/cni-ipam" "$RUN_DIR/pod-logs" \
        "$RUN_DIR/varlib" "$RUN_DIR/mntns"
    if cmd_leftovers >&2; then
        log "cluster stopped; nothing left behind"
    else
        die "cluster stopped, but the above is left"
    fi
}

cmd_leftovers() {
    local left=0 pids hier
    pids="$(cluster_pids)"
    if [[ -n "$pids" ]]; then
        echo "processes: $(echo "$pids" | tr '\n' ' ')"
        left=1
    fi
    while read -r hier; do
        if [[ -d "$hier$CGROUP" ]]; then
            echo "cgroup: $hier$CGROUP"
            left=1
        fi
    done < <(cgroup_roots)
    if pgrep -f -- "^$HOLDER_NAME" >/dev/null 2>&1; then
        echo "holder process: $(pgrep -f -- "^$HOLDER_NAME" | tr '\n' ' ')"
        left=1
    fi
    return "$left"
}

cmd_status() {
    HOLDER="$(holder_pid)" || {
        echo "not running"
        return 1
    }
    KUBECTL="$(tool kubectl)"
    local name pid
    for name in "${DAEMONS[@]}"; do
        if pid="$(running_pid "$name")"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
    done
    node_ready && echo "node $NODE_NAME: Ready" || {
        echo "node $NODE_NAME: not ready"
        return 1
    }
}

cmd_exec() {
    HOLDER="$(holder_pid)" || die "the cluster is not running (hack/k8s.sh up)"
    exec nsenter --target "$HOLDER" --net -- env KUBECONFIG="$KUBECONFIG_PATH" "$@"
}

cmd_load() {
    HOLDER="$(holder_pid)" || die "the cluster is not running (hack/k8s.sh up)"
    local tar done_dir="$RUN_DIR/containerd/imported"
    mkdir -p "$done_dir"
    for tar in "$@"; do
        # An archive is named by its content (hack/images.sh): imported once per cluster.
        [[ -f "$done_dir/$(basename "$tar")" ]] && continue
        log "importing $(basename "$tar") into the cluster's containerd"
        in_ns ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack "$(realpath "$tar")" >/dev/null ||
            die "importing $tar failed"
        touch "$done_dir/$(basename "$tar")"
    done
}

main() {
    [[ $# -ge 1 ]] || usage
    case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    leftovers) cmd_leftovers ;;
    exec)
        shift
        cmd_exec "$@"
        ;;
    load)
        shift
        cmd_load "$@"
        ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
    esac
}

main "$@"; exit
