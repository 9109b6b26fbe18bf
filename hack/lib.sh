# Shell helpers shared by hack/cluster.sh, hack/k8s.sh, hack/images.sh and hack/test-k8s.sh; sourced, never run:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Messages name the script that sourced it. The daemon helpers (pid_file ... wait_until) read the sourcing
# script's RUN_DIR (pid files), LOGS (daemon logs) and TIMEOUT (seconds, for the message), and call its
# `stop_all` when a start fails; `pending_checks NAME`, when the script defines it, adds to that message.

LIB_SCRIPT="$(basename "$0")"

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$LIB_SCRIPT" "$*" >&2
    exit 1
}
# The script's header comment (from line 2 to `set -euo`) as its usage; exits with $1 (default 2).
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
now_ms() { date +%s%3N; }

# Install the Debian packages "$@" that are missing (apt-get; root).
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return
    command -v apt-get >/dev/null || die "missing packages: ${missing[*]} (Debian's; install them)"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# The cgroup hierarchies to make a cgroup in: each v1 controller's, or the one unified (v2) tree.
cgroup_roots() {
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        printf '%s\n' /sys/fs/cgroup/
        return
    fi
    local hier
    for hier in /sys/fs/cgroup/*/; do
        [[ -f "$hier/cgroup.procs" ]] && printf '%s\n' "$hier"
    done
}

# make_cgroup NAME: /NAME in every hierarchy (cpuset v1: the parent's CPUs and memory nodes; v2: every controller
# handed down to its children).
make_cgroup() {
    local hier dir c
    while read -r hier; do
        dir="$hier$1"
        mkdir -p "$dir"
        if [[ -f "$hier/cpuset.cpus" && ! -f "$hier/cgroup.controllers" ]]; then
            cat "$hier/cpuset.cpus" >"$dir/cpuset.cpus"
            cat "$hier/cpuset.mems" >"$dir/cpuset.mems"
        fi
        if [[ -f "$dir/cgroup.subtree_control" ]]; then
            for c in $(<"$dir/cgroup.controllers"); do echo "+$c" >"$dir/cgroup.subtree_control" 2>/dev/null || true; done
        fi
    done < <(cgroup_roots)
}

# remove_cgroup NAME: /NAME and the cgroups under it, in every hierarchy (each must have no process left).
remove_cgroup() {
    local hier
    while read -r hier; do
        [[ -d "$hier$1" ]] || continue
        find "$hier$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done < <(cgroup_roots)
}

# make_pki DIR CA_NAME EXTRA_NAMES: a CA, the API server's serving certificate (loopback, the kubernetes Service's
# names and EXTRA_NAMES, in openssl's syntax: "IP:10.0.0.1, ..."), the admin client certificate (group
# system:masters) and the service-account key pair. Made once, kept across `up`s.
make_pki() {
    local dir="$1" ca_name="$2" sans
    sans="IP:127.0.0.1, DNS:localhost, $3, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc"
    sans+=", DNS:kubernetes.default.svc.cluster.local"
    [[ -f "$dir/ca.crt" && -f "$dir/apiserver.crt" && -f "$dir/admin.crt" && -f "$dir/sa.key" ]] && return
    command -v openssl >/dev/null || die "openssl is needed to make the control plane's certificates"
    log "generating certificates in ${dir#"$ROOT"/}"
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 700 "$dir"
    cat >"$dir/openssl.cnf" <<EOF
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
subjectAltName = $sans
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
    (
        cd "$dir"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj "/CN=$ca_name" \
            -config openssl.cnf -extensions ca 2>/dev/null
        sign() { # NAME SUBJECT EXTENSIONS
            openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" -config openssl.cnf 2>/dev/null
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
                -days 3650 -extfile openssl.cnf -extensions "$3" -out "$1.crt" 2>/dev/null
            rm -f "$1.csr"
        }
        sign apiserver "/CN=kube-apiserver" server
        sign admin "/O=system:masters/CN=stampede-admin" client
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        chmod 600 ./*.key
    ) || die "generating certificates failed"
}

# write_kubeconfig PATH SERVER_URL NAME PKI_DIR: the admin kubeconfig (written whole, then moved into place).
write_kubeconfig() {
    local path="$1" server="$2" name="$3" pki="$4"
    cat >"$path.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: $name
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
  - name: stampede-admin
    user:
      client-certificate-data: $(base64 -w0 <"$pki/admin.crt")
      client-key-data: $(base64 -w0 <"$pki/admin.key")
contexts:
  - name: $name
    context: {cluster: $name, user: stampede-admin, namespace: default}
current-context: $name
EOF
    chmod 600 "$path.tmp"
    mv -f "$path.tmp" "$path"
}

pid_file() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }

# Print the PID of daemon $1 when it runs: its pid file names a live process started from that binary (argv[0]
# begins with the name, so a recycled PID is not taken for it).
running_pid() {
    local name="$1" file pid argv0
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)" || return 1
    [[ "$(basename "$argv0")" == "$name"* ]] || return 1
    printf '%s\n' "$pid"
}

# start_daemon NAME CMD...: CMD in its own session, its output in $LOGS/NAME.log, its PID in the pid file. The
# command must exec the daemon (setsid, nsenter and env do) so that the PID is the daemon's. fd 9 (the caller's
# lock) is closed so that the daemon does not hold it.
start_daemon() {
    local name="$1"
    shift
    setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
    printf '%s\n' "$!" >"$(pid_file "$name")"
}

fail_start() { # NAME MESSAGE: print the daemon's last lines, stop everything (the script's stop_all), exit 1
    local name="$1" msg="$2"
    printf '%s: error: %s\n' "$LIB_SCRIPT" "$msg" >&2
    if [[ -f "$LOGS/$name.log" ]]; then
        printf -- '--- last lines of %s ---\n' "${LOGS#"$ROOT"/}/$name.log" >&2
        tail -n 30 "$LOGS/$name.log" >&2
        printf -- '---\n' >&2
    fi
    stop_all
    exit 1
}

wait_until() { # NAME DEADLINE_MS CHECK...: poll CHECK until it succeeds; fail if NAME dies or time runs out
    local name="$1" deadline="$2" more=""
    shift 2
    until "$@" >/dev/null 2>&1; do
        # The PID was just written by start_daemon: alive is enough (it may not have exec'd the daemon yet).
        kill -0 "$(<"$(pid_file "$name")")" 2>/dev/null || fail_start "$name" "$name exited during start-up"
        if (($(now_ms) >= deadline)); then
            if declare -F pending_checks >/dev/null; then more="$(pending_checks "$name")"; fi
            fail_start "$name" "$name not ready after ${TIMEOUT}s$more"
        fi
        sleep 0.2
    done
}
