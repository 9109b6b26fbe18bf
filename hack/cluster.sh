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

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'cluster.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

now_ms() { date +%s%3N; }

pid_file() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }

# Print the PID of component $1 when it runs (its pid file names a live process started from that binary).
running_pid() {
    local name="$1" file pid argv0
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled PID: the process must be the component's binary.
    argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)" || return 1
    [[ "$(basename "$argv0")" == "$name"* ]] || return 1
    printf '%s\n' "$pid"
}

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

# A local CA, the serving certificate for 127.0.0.1/localhost, the admin client certificate (group
# system:masters) and the service-account signing key. Made once and kept across `up`s.
make_pki() {
    if [[ -f "$PKI/ca.crt" && -f "$PKI/apiserver.crt" && -f "$PKI/admin.crt" && -f "$PKI/sa.key" ]]; then
        return
    fi
    command -v openssl >/dev/null || die "openssl is needed to make the control plane's certificates"
    log "generating certificates in ${PKI#"$ROOT"/}"
    rm -rf "$PKI"
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    local cnf="$PKI/openssl.cnf"
    cat >"$cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
    (
        cd "$PKI"
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 \
            -subj "/CN=stampede-local-ca" -config "$cnf" -extensions ca 2>/dev/null
        sign() { # NAME SUBJECT EXTENSIONS
            openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" -config "$cnf" 2>/dev/null
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
                -days 3650 -extfile "$cnf" -extensions "$3" -out "$1.crt" 2>/dev/null
            rm -f "$1.csr"
        }
        sign apiserver "/CN=kube-apiserver" server
        sign admin "/O=system:masters/CN=stampede-admin" client
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        chmod 600 ./*.key
    ) || die "generating certificates failed"
}

write_kubeconfig() {
    local tmp="$KUBECONFIG_PATH.tmp"
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: stampede-local
    cluster:
      server: https://127.0.0.1:${APISERVER_PORT}
      certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
  - name: stampede-admin
    user:
      client-certificate-data: $(base64 -w0 <"$PKI/admin.crt")
      client-key-data: $(base64 -w0 <"$PKI/admin.key")
contexts:
  - name: stampede-local
    context: {cluster: stampede-local, user: stampede-admin, namespace: default}
current-context: stampede-local
EOF
    chmod 600 "$tmp"
    mv -f "$tmp" "$KUBECONFIG_PATH"
}

# Start "$@" as component $1's daemon in its own session, with its output in logs/NAME.log.
start_daemon() {
    local name="$1"
    shift
    # Close fd 9 (the `up` lock) so the daemon does not hold it.
    setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
    local pid=$!
    printf '%s\n' "$pid" >"$(pid_file "$name")"
}

# For a kube-apiserver that is not ready: the failing checks of /readyz, as lines to append to an error.
pending_checks() {
    [[ "$1" == kube-apiserver ]] || return 0
    local failing
    failing="$(curl -sS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:${APISERVER_PORT}/readyz?verbose" 2>&1 | grep -v '^\[+\]' | head -n 20)" || true
    [[ -z "$failing" ]] || printf '; /readyz says:\n%s' "$failing"
}

fail_start() { # NAME MESSAGE
    local name="$1" msg="$2"
    printf 'cluster.sh: error: %s\n' "$msg" >&2
    if [[ -f "$LOGS/$name.log" ]]; then
        printf -- '--- last lines of %s ---\n' "${LOGS#"$ROOT"/}/$name.log" >&2
        tail -n 30 "$LOGS/$name.log" >&2
        printf -- '---\n' >&2
    fi
    stop_all
    exit 1
}

wait_until() { # NAME DEADLINE_MS CHECK...: poll CHECK until it succeeds; fail if NAME dies or time runs out
    local name="$1" deadline="$2"
    shift 2
    until "$@" >/dev/null 2>&1; do
        running_pid "$name" >/dev/null || fail_start "$name" "$name exited during start-up"
        (($(now_ms) < deadline)) || fail_start "$name" "$name not ready after ${TIMEOUT}s$(pending_checks "$name")"
        sleep 0.2
    done
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
    make_pki

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

    write_kubeconfig
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
