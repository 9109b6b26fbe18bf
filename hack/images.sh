#!/usr/bin/env bash
# Build every image the chart runs, with no image registry: a Debian base made by debootstrap, then with Docker
# (a private dockerd this script starts and stops) Stampede's api, worker and operator images from the Dockerfile on
# a Python base from Debian's packages, and Redis, PostgreSQL and k6 images from hack/images/*.Dockerfile.
#
# Usage:
#   hack/images.sh build   build them all (cached: an unchanged input reuses its layers)
#   hack/images.sh save    build, then write each to an archive named by its image id (kept; reused while
#                          nothing they are built from changes); prints their paths
#   hack/images.sh load    build, save and import them into hack/k8s.sh's cluster (its containerd)
#   hack/images.sh sizes   print each image's size
#   hack/images.sh down    stop the private dockerd (build, save and load stop it when they finish)
#
# Images: stampede-{api,worker,operator,redis,postgresql,k6}:$IMAGE_TAG (default dev), on stampede-python:3.11 on
# stampede-debian:bookworm. The debootstrap root file system is cached as a tarball in $STAMPEDE_TOOLS_DIR/images
# (default .tools/images), keyed by suite, mirror and package list; Docker's layers in .tools/images/docker.
#
# The private dockerd changes nothing on the host: its own data and exec roots and socket, no bridge, no iptables
# rules, no IP forwarding, its mounts in a mount namespace of its own (so they vanish with it) and its cgroups under
# /stampede-build-<id>, removed when it stops. Build steps use the host's network (they fetch Debian packages and
# the locked Python packages).
#
# Environment: IMAGE_TAG, DEBIAN_MIRROR (default http://deb.debian.org/debian), DOCKER (the docker client).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${STAMPEDE_TOOLS_DIR:-$ROOT/.tools}"
CACHE="$TOOLS_DIR/images"
RUN_DIR="$ROOT/.run/images"
TAG="${IMAGE_TAG:-dev}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
ID="$(printf '%s' "$RUN_DIR" | sha1sum | cut -c1-10)"
DOCKERD_NAME="stampede-dockerd-$ID"
CGROUP="stampede-build-$ID"
SOCK="$RUN_DIR/docker.sock"
BASE=stampede-debian:$SUITE
PYTHON=stampede-python:3.11-$SUITE
PYTHON_BUILD=stampede-python-build:3.11-$SUITE
COMPONENTS=(api worker operator)
THIRD_PARTY=(redis postgresql k6)

# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"

docker_cmd() { DOCKER_HOST="unix://$SOCK" DOCKER_BUILDKIT=0 "${DOCKER:-docker}" "$@"; }

dockerd_pid() {
    local pid
    [[ -f "$RUN_DIR/dockerd.pid" ]] || return 1
    pid="$(<"$RUN_DIR/dockerd.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)" == "$DOCKERD_NAME" ]] || return 1
    printf '%s\n' "$pid"
}

dockerd_up() {
    dockerd_pid >/dev/null && return
    [[ "$(id -u)" == 0 ]] || die "building images needs root (a private dockerd)"
    install_packages debootstrap docker.io
    mkdir -p "$RUN_DIR" "$CACHE/docker"
    make_cgroup "$CGROUP"
    # /etc/docker and /run get a tmpfs in the daemon's mount namespace: its key, plugin folder and shim sockets
    # go there, not on the host.
    setsid unshare --mount --propagation private -- bash -c '
        mount -t tmpfs tmpfs /etc/docker
        mount -t tmpfs -o mode=755 tmpfs /run
        echo $$ >"$1/dockerd.pid"
        exec -a "$2" dockerd --data-root "$3" --exec-root "$1/exec" --pidfile "$1/dockerd.docker-pid" \
            --host "unix://$1/docker.sock" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
            --ip-forward=false --cgroup-parent "/$4" --exec-opt native.cgroupdriver=cgroupfs --log-level=warn
    ' dockerd "$RUN_DIR" "$DOCKERD_NAME" "$CACHE/docker" "$CGROUP" </dev/null >"$RUN_DIR/dockerd.log" 2>&1 9>&- &
    local i
    for ((i = 0; i < 300; i++)); do
        docker_cmd version >/dev/null 2>&1 && return
        sleep 0.1
    done
    tail -n 20 "$RUN_DIR/dockerd.log" >&2
    die "dockerd did not start"
}

cmd_down() {
    local pid i
    if pid="$(dockerd_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN_DIR/dockerd.pid"
    remove_cgroup "$CGROUP"
}

# The Debian root file system, made once per suite, mirror and package list, imported as $BASE.
base_image() {
    local hash tarball tmp
    hash="$(printf '%s %s minbase\n' "$SUITE" "$MIRROR" | sha256sum | cut -c1-12)"
    tarball="$CACHE/debian-$SUITE-minbase-$hash.tar"
    if [[ ! -f "$tarball" ]]; then
        log "debootstrap $SUITE (minbase) from $MIRROR (once; cached in ${tarball#"$ROOT"/})"
        tmp="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
        debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$RUN_DIR/debootstrap.log" 2>&1 ||
            {
                tail -n 20 "$RUN_DIR/debootstrap.log" >&2
                rm -rf "$tmp"
                die "debootstrap failed"
            }
        rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
        tar --numeric-owner -C "$tmp" -cf "$tarball.tmp" .
        rm -rf "$tmp"
        mv "$tarball.tmp" "$tarball"
    fi
    if [[ "$(docker_cmd image inspect -f '{{index .Config.Labels "stampede.rootfs"}}' "$BASE" 2>/dev/null)" != "$hash" ]]; then
        log "importing the Debian base as $BASE"
        docker_cmd import --change "LABEL stampede.rootfs=$hash" --change 'CMD ["/bin/bash"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            "$tarball" "$BASE" >/dev/null
    fi
}

build() { # TAG DOCKERFILE CONTEXT [ARGS...]
    local tag="$1" file="$2" context="$3"
    shift 3
    log "building $tag"
    docker_cmd build --network host -q -t "$tag" -f "$file" "$@" "$context" >/dev/null ||
        die "building $tag failed (run: DOCKER_HOST=unix://$SOCK docker build ... for the output)"
}

cmd_build() {
    dockerd_up
    base_image
    local dir="$ROOT/hack/images" c k6
    build "$PYTHON" "$dir/python.Dockerfile" "$dir" --build-arg "BASE_IMAGE=$BASE"
    # The build stage trusts what this host trusts (pip fetches the locked packages over HTTPS, maybe through a
    # TLS-inspecting proxy); the runtime images do not carry that bundle.
    mkdir -p "$RUN_DIR/ca-context"
    cp -f "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$RUN_DIR/ca-context/ca-certificates.crt"
    build "$PYTHON_BUILD" "$dir/python-build.Dockerfile" "$RUN_DIR/ca-context" --build-arg "BASE_IMAGE=$PYTHON"
    for c in "${COMPONENTS[@]}"; do
        build "stampede-$c:$TAG" "$ROOT/Dockerfile" "$ROOT" --target "$c" \
            --build-arg "PYTHON_IMAGE=$PYTHON" --build-arg "BUILD_IMAGE=$PYTHON_BUILD"
    done
    build "stampede-redis:$TAG" "$dir/redis.Dockerfile" "$dir" --build-arg "BASE_IMAGE=$BASE"
    build "stampede-postgresql:$TAG" "$dir/postgresql.Dockerfile" "$dir" --build-arg "BASE_IMAGE=$BASE"
    # k6's context: the pinned binary alone.
    k6="$("$ROOT/hack/tools.sh" path k6)"
    mkdir -p "$RUN_DIR/k6-context"
    cp -f "$k6" "$RUN_DIR/k6-context/k6"
    build "stampede-k6:$TAG" "$dir/k6.Dockerfile" "$RUN_DIR/k6-context" --build-arg "BASE_IMAGE=$BASE"
}

all_tags() {
    local c
    for c in "${COMPONENTS[@]}" "${THIRD_PARTY[@]}"; do printf 'stampede-%s:%s\n' "$c" "$TAG"; done
}

# A digest of everything the images are built from: an unchanged digest reuses the saved archive, no daemon.
inputs_digest() {
    {
        printf '%s %s %s\n' "$TAG" "$SUITE" "$MIRROR"
        sha256sum "$("$ROOT/hack/tools.sh" path k6)" | cut -d' ' -f1
        cd "$ROOT"
        find Dockerfile .dockerignore pyproject.toml README.md LICENSE requirements lua core app worker operator dev \
            hack/images hack/images.sh -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
            -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

# Save each image to its own archive named by its image id ($CACHE/stampede-<name>-<id>.tar, kept: an image that
# did not change is not saved again, and hack/k8s.sh imports an archive once per cluster). The list of archives of
# a build is kept under the digest of its inputs: an unchanged digest reuses them with no daemon at all.
cmd_save() {
    local digest list="$CACHE/images-$TAG.list" tag id name out archives=()
    digest="$(inputs_digest)"
    if [[ -f "$list" && "$(head -n1 "$list")" == "$digest" ]] && tail -n +2 "$list" | xargs -r ls >/dev/null 2>&1; then
        log "images unchanged since they were saved: reusing the archives"
        tail -n +2 "$list"
        return
    fi
    cmd_build
    while read -r tag; do
        id="$(docker_cmd image inspect -f '{{.Id}}' "$tag")"
        name="${tag%%:*}"
        out="$CACHE/$name-$TAG-${id#sha256:}.tar"
        out="${out:0:${#out}-52}.tar" # the id's first 12 hex digits
        if [[ ! -f "$out" ]]; then
            log "saving $tag to ${out#"$ROOT"/}"
            rm -f "$CACHE/$name-$TAG-"*.tar
            docker_cmd save -o "$out.tmp" "$tag" || die "docker save $tag failed"
            mv -f "$out.tmp" "$out"
        fi
        archives+=("$out")
    done < <(all_tags)
    printf '%s\n' "$digest" "${archives[@]}" >"$list"
    printf '%s\n' "${archives[@]}"
}

cmd_sizes() {
    dockerd_up
    # shellcheck disable=SC2046 # one tag a word
    docker_cmd image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^stampede-' | sort
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
    build)
        trap cmd_down EXIT
        cmd_build
        ;;
    save)
        trap cmd_down EXIT
        cmd_save
        ;;
    load)
        trap cmd_down EXIT
        local tars
        mapfile -t tars < <(cmd_save)
        cmd_down
        "$ROOT/hack/k8s.sh" load "${tars[@]}"
        ;;
    sizes)
        trap cmd_down EXIT
        cmd_sizes
        ;;
    down) cmd_down ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
    esac
}

main "$@"; exit
