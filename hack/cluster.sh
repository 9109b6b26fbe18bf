#!/usr/bin/env bash
# A local Kubernetes control plane for development and tests, like controller-runtime's envtest: etcd and
# kube-apiserver only, on free loopback ports. There is no controller-manager, scheduler or kubelet, so objects
# are stored and validated but no Pod ever starts (a Deployment stays at 0 ready replicas), and a deleted
# namespace stays Terminating.
#
# Usage:
#   hack/cluster.sh up       start etcd + kube-apiserver (a no-op when already up); prints the kubeconfig path
#   hack/cluster.sh down     stop them (TERM, then KILL after a grace period)
#   hack/cluster.sh status   print what runs where; exit 0 when up and ready, 1 otherwise
#   hack/cluster.sh env      print `export KUBECONFIG=...` (use: eval "$(hack/cluster.sh env)")
#
# Everything lives under .run/cluster/ (git-ignored): pki/ (a local CA, the serving certificate, the admin
# client certificate in group system:masters, the service-account signing key), etcd/ (data, wiped by each
# `up`), logs/, *.pid, ports.env and the admin kubeconfig. Authorization is RBAC.
# Binaries come from hack/tools.sh (built on first use).
#
# Environment: STAMPEDE_CLUSTER_DIR (default <repo>/.run/cluster), STAMPEDE_CLUSTER_TIMEOUT (seconds to wait for
# readiness, default 90), ETCD / KUBE_APISERVER (binaries to use instead of hack/tools.sh's).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${STAMPEDE_CLUSTER_DIR:-$ROOT/.run/cluster}"
PKI="$RUN_DIR/pki"
LOGS="$RUN_DIR/logs"
KUBECONFIG_PATH="$RUN_DIR/kubeconfig"
PORTS_FILE="$RUN_DIR/ports.env"
TIMEOUT="${STAMPEDE_CLUSTER_TIMEOUT:-90}"
COMPONENTS=(etcd kube-apiserver) # start order; stopped in reverse

# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

load_ports() {
    [[ -f "$PORTS_FILE" ]] || return 1
    # shellcheck source=/dev/null
    source "$PORTS_FILE"
}

apiserver_get() { # PATH: GET it as the admin user
    curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:${APISERVER_PORT}$1"
}

free_ports() { # N: print N distinct free loopback TCP ports (below the ephemeral range)
    python3 "$(dirname "${BASH_SOURCE[0]}")/free_ports.py" "$1" | tr '\n' ' '
}

# For a kube-apiserver that is not ready: the failing checks of /readyz, as lines to append to an error.
pending_checks() {
    [[ "$1" == kube-apiserver ]] || return 0
    local failing
    failing="$(curl -sS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:${APISERVER_PORT}/readyz?verbose" 2>&1 | grep -v '^\[+\]' | head -n 20)" || true
    [[ -z "$failing" ]] || printf '; /readyz says:\n%s' "$failing"
}

# shellcheck disable=SC2317 # invoked through wait_until
etcd_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" | grep -q '"health":"true"'; }
apiserver_ready() { [[ "$(apiserver_get /readyz)" == "ok" ]]; }

stop_component() {
    local name="$1" pid i
    if pid="$(running_pid "$name")"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do # 10 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop after TERM; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$(pid_file "$name")"
}

stop_all() {
    local i
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[$i]}"; done
}

cmd_up() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    flock 9
    if running_pid etcd >/dev/null && running_pid kube-apiserver >/dev/null && load_ports; then
        # Up already (maybe slow to answer on a busy machine): give it the start-up timeout before restarting it.
        local give_up=$(($(now_ms) + TIMEOUT * 1000))
        until apiserver_ready 2>/dev/null || (($(now_ms) > give_up)) || ! running_pid kube-apiserver >/dev/null; do
            sleep 0.5
        done
        if apiserver_ready 2>/dev/null; then
            log "control plane already up at https://127.0.0.1:${APISERVER_PORT}"
            printf '%s\n' "$KUBECONFIG_PATH"
            return
        fi
        log "control plane running but not ready after ${TIMEOUT}s: restarting it"
    fi
    stop_all # leftovers of a half-started or crashed control plane

    local etcd_bin apiserver_bin
    # fd 9 (the `up` lock) closed: nothing the build leaves behind may hold the lock.
    etcd_bin="${ETCD:-$("$ROOT/hack/tools.sh" path etcd 9>&-)}"
    apiserver_bin="${KUBE_APISERVER:-$("$ROOT/hack/tools.sh" path kube-apiserver 9>&-)}"
    command -v curl >/dev/null || die "curl is needed to check the control plane's health"
    make_pki "$PKI" stampede-local-ca "IP:10.0.0.1"

    local start deadline
    start="$(now_ms)"
    deadline=$((start + TIMEOUT * 1000))
    rm -rf "$RUN_DIR/etcd"
    mkdir -p "$LOGS"
    mkdir -m 700 "$RUN_DIR/etcd"
    read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT <<<"$(free_ports 3)"
    printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" \
        >"$PORTS_FILE"

    log "starting etcd on 127.0.0.1:$ETCD_PORT"
    start_daemon etcd "$etcd_bin" \
        --name=stampede \
        --data-dir="$RUN_DIR/etcd" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="stampede=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state=new \
        --unsafe-no-fsync \
        --log-level=warn
    wait_until etcd "$deadline" etcd_healthy

    log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
    start_daemon kube-apiserver "$apiserver_bin" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$APISERVER_PORT" \
        --cert-dir="$PKI" \
        --tls-cert-file="$PKI/apiserver.crt" \
        --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --authorization-mode=RBAC \
        --service-cluster-ip-range=10.0.0.0/24 \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --allow-privileged=true \
        --disable-admission-plugins=ServiceAccount \
        --endpoint-reconciler-type=none \
        --profiling=false
    wait_until kube-apiserver "$deadline" apiserver_ready

    write_kubeconfig "$KUBECONFIG_PATH" "https://127.0.0.1:${APISERVER_PORT}" stampede-local "$PKI"
    local ms=$(($(now_ms) - start))
    log "control plane ready in $((ms / 1000)).$((ms % 1000 / 100))s; use: eval \"\$(hack/cluster.sh env)\""
    printf '%s\n' "$KUBECONFIG_PATH"
}

cmd_down() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    flock 9
    if ! running_pid etcd >/dev/null && ! running_pid kube-apiserver >/dev/null; then
        rm -f "$(pid_file etcd)" "$(pid_file kube-apiserver)"
        log "control plane not running"
        return
    fi
    stop_all
    log "control plane stopped"
}

cmd_status() {
    local name pid rc=0
    load_ports || true
    for name in "${COMPONENTS[@]}"; do
        if pid="$(running_pid "$name")"; then
            case "$name" in
            etcd) echo "etcd: running (pid $pid) at http://127.0.0.1:${ETCD_PORT:-?}" ;;
            kube-apiserver) echo "kube-apiserver: running (pid $pid) at https://127.0.0.1:${APISERVER_PORT:-?}" ;;
            esac
        else
            echo "$name: stopped"
            rc=1
        fi
    done
    if ((rc == 0)); then
        if apiserver_ready 2>/dev/null; then
            echo "ready: yes (kubeconfig $KUBECONFIG_PATH)"
        else
            echo "ready: no"
            rc=1
        fi
    fi
    return "$rc"
}

cmd_env() {
    running_pid kube-apiserver >/dev/null || log "control plane not running: start it with hack/cluster.sh up"
    printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH"
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
    esac
}

# `exit` on the same line: bash reads no further, even if this file is edited while it runs.
main "$@"; exit
