#!/usr/bin/env bash
# End to end on a real cluster (hack/k8s.sh, images loaded by hack/images.sh): `make test-k8s`.
#
#   0. the network rule: the cluster's network namespace has no link out, an unreachable default route, and no
#      route to an outside address or to any of the host's
#   1. helm install of the chart with the bundled Redis and PostgreSQL (ci/kind-values.yaml + hack/k8s/values.yaml)
#   2. the operator Ready; the FlashSale hack/k8s/flashsale.yaml Live, its API and worker pods Ready
#   3. helm test: the k6 smoke in-cluster, then the integrity audit
#   4. a spike Job made from the chart's CronJob (k6, then the audit)
#   5. the operator pod killed (no grace): replaced and Ready
#   6. an API pod deleted in the middle of a spike Job; the Deployment back to its replicas
# After steps 3 to 6 the integrity audit of the sale runs in a worker pod. Steps 3 to 6 all run even when one
# fails (k6's thresholds on latency and failed requests can fail on a starved machine while the audit is clean);
# the test fails when any step or audit failed, and dumps the namespace. Every step prints its duration.
# All traffic stays in the cluster's network namespace: kubectl and helm speak to its loopback, k6 to the sale's
# Service. The release stays installed afterwards (`make k8s-down` removes everything).
#
# Environment: IMAGE_TAG (default dev), K8S_NAMESPACE (default stampede).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NS="${K8S_NAMESPACE:-stampede}"
TAG="${IMAGE_TAG:-dev}"
RELEASE=stampede
SALE=ci-sale
KUBECTL="$("$ROOT/hack/tools.sh" path kubectl)"
HELM="$("$ROOT/hack/tools.sh" path helm)"
OUT="$ROOT/.run/k8s"
FAILED=()

# shellcheck source=hack/lib.sh
source "$ROOT/hack/lib.sh"
k() { "$ROOT/hack/k8s.sh" exec "$KUBECTL" -n "$NS" "$@"; }
h() { "$ROOT/hack/k8s.sh" exec "$HELM" "$@"; }

dump() {
    log "the namespace $NS"
    k get all,flashsales,jobs,pdb -o wide || true
    k get events --sort-by=.lastTimestamp | tail -n 40 || true
    local pod
    for pod in $(k get pods -o name); do
        echo "--- $pod"
        k logs "$pod" --all-containers --prefix --tail=40 || true
    done
}

# Run step NAME (a function) with its own `set -e`; record a failure instead of stopping.
run() {
    local name="$1" start=$SECONDS rc
    log "$name"
    shift
    set +e # (`cmd || rc=$?` would switch -e off inside the step too)
    (
        set -e
        "$@"
    )
    rc=$?
    set -e
    if ((rc == 0)); then
        log "  ok in $((SECONDS - start))s"
    else
        log "  FAILED (exit $rc) after $((SECONDS - start))s"
        FAILED+=("$name")
    fi
    return 0
}

# Wait for Job $1 to finish; print k6's summary line and the audit; fail unless it completed.
job_passes() {
    local job="$1" status="" i
    for ((i = 0; i < 900; i++)); do
        status="$(k get job "$job" -o jsonpath='{.status.succeeded}/{.status.failed}')"
        [[ "$status" == 1/* || "$status" == */1 ]] && break
        sleep 1
    done
    local logs
    logs="$(k logs "job/$job" --all-containers --prefix || true)"
    grep -E 'k6\] (spike|smoke):|thresholds|EOF|audit\]' <<<"$logs" | sort | uniq -c | sort -rn | head -n 12 || true
    # k6's thresholds hold vacuously for a run that sent nothing (a starved pod): that is no pass.
    if ! grep -qE 'k6\] (spike|smoke): requests [1-9]' <<<"$logs"; then
        log "  k6 sent no request"
        return 1
    fi
    [[ "$status" == 1/* ]]
}

network_rule() {
    local links
    links="$("$ROOT/hack/k8s.sh" exec ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' |
        grep -vE '^(lo|cni0|veth[0-9a-f]+)$' || true)"
    [[ -z "$links" ]] || {
        log "the cluster's network namespace has a link out: $links"
        return 1
    }
    "$ROOT/hack/k8s.sh" exec ip route show default | grep -qE '^unreachable default *$'
    # The kernel's own answer for an outside address and for each of the host's: no route (a lookup; nothing sent).
    local addr
    for addr in 1.1.1.1 $(ip -o -4 addr show scope global | awk '{ sub(/\/.*/, "", $4); print $4 }'); do
        if "$ROOT/hack/k8s.sh" exec ip route get "$addr" >/dev/null 2>&1; then
            log "the cluster's network namespace has a route to $addr"
            return 1
        fi
    done
}

install() {
    h upgrade --install "$RELEASE" "$ROOT/charts/stampede" --namespace "$NS" --create-namespace \
        -f "$ROOT/charts/stampede/ci/kind-values.yaml" -f "$ROOT/hack/k8s/values.yaml" \
        --set "image.tag=$TAG,redis.image.tag=$TAG,postgresql.image.tag=$TAG,loadTest.image.tag=$TAG" \
        --wait --timeout 10m
    k rollout status "statefulset/$RELEASE-operator" --timeout=5m
}

sale_live() {
    local start end component
    start="$(date -u -d '-1 min' +%Y-%m-%dT%H:%M:%SZ)"
    end="$(date -u -d '+2 hour' +%Y-%m-%dT%H:%M:%SZ)"
    sed -e "s/SALE_START/$start/" -e "s/SALE_END/$end/" "$ROOT/hack/k8s/flashsale.yaml" | k apply -f -
    k wait "flashsale/$SALE" --for=jsonpath='{.status.phase}'=Live --timeout=5m
    for component in api worker; do
        k wait "deployment/$SALE-$component" --for=create --timeout=2m
        k rollout status "deployment/$SALE-$component" --timeout=5m
    done
    # Ready from real pods (this cluster has a kubelet): the counters seeded, every API and worker pod available.
    k wait "flashsale/$SALE" --for=condition=Ready --timeout=5m
    k get pods -o wide
}

helm_test() {
    local rc=0
    h test "$RELEASE" -n "$NS" --logs --timeout 10m >"$OUT/helm-test.log" 2>&1 || rc=$?
    local smoke
    smoke="$(k logs "$RELEASE-test-smoke" -c k6 || true)"
    grep -E '^smoke:|thresholds' <<<"$smoke" || true
    grep -E 'Phase|audit|CLEAN|VIOLATION' "$OUT/helm-test.log" | tail -n 20 || true
    if ! grep -qE '^smoke: requests [1-9]' <<<"$smoke"; then
        log "  k6 sent no request"
        return 1
    fi
    return "$rc"
}

spike() {
    k delete job spike-1 --ignore-not-found >/dev/null
    k create job spike-1 --from="cronjob/$RELEASE-k6-spike"
    job_passes spike-1
}

operator_killed() {
    local old new="" i
    old="$(k get pod "$RELEASE-operator-0" -o jsonpath='{.metadata.uid}')"
    k delete pod "$RELEASE-operator-0" --grace-period=0 --force --wait=false
    for ((i = 0; i < 120; i++)); do
        new="$(k get pod "$RELEASE-operator-0" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)"
        [[ -n "$new" && "$new" != "$old" ]] && break
        sleep 1
    done
    [[ -n "$new" && "$new" != "$old" ]]
    k wait pod "$RELEASE-operator-0" --for=condition=Ready --timeout=5m
    k rollout status "statefulset/$RELEASE-operator" --timeout=5m
}

api_pod_deleted_mid_spike() {
    local victim i
    k delete job spike-2 --ignore-not-found >/dev/null
    k create job spike-2 --from="cronjob/$RELEASE-k6-spike"
    for ((i = 0; i < 300; i++)); do # until k6 (the second init container) runs
        [[ -n "$(k get pods -l job-name=spike-2 \
            -o jsonpath='{.items[0].status.initContainerStatuses[1].state.running}' 2>/dev/null)" ]] && break
        sleep 1
    done
    sleep 15 # into the spike's second stage
    # awk reads the whole list: an early exit would kill kubectl with SIGPIPE, fatal under pipefail.
    victim="$(k get pods -o name | awk -v p="^pod/$SALE-api-" '$0 ~ p && !n { print; n = 1 }')"
    log "  deleting $victim during the spike"
    k delete "$victim" --wait=false
    local rc=0
    job_passes spike-2 || rc=$?
    k rollout status "deployment/$SALE-api" --timeout=5m
    return "$rc"
}

# The integrity audit of the sale (the ledger, Redis and the queue), in a worker pod.
audit() {
    k exec "deployment/$SALE-worker" -- stampede audit --sale "$NS/$SALE" --wait 120
}

run "[0] network rule: no link out of the cluster's network namespace" network_rule
run "[1] helm install (bundled Redis and PostgreSQL, images $TAG)" install
run "[2] FlashSale $SALE Live, its API and worker pods Ready" sale_live
if ((${#FAILED[@]} == 0)); then
    run "[3] helm test (k6 smoke in-cluster, then the audit)" helm_test
    run "[3] audit" audit
    run "[4] spike Job from the CronJob" spike
    run "[4] audit" audit
    run "[5] operator pod killed and replaced" operator_killed
    run "[5] audit" audit
    run "[6] API pod deleted in the middle of a spike" api_pod_deleted_mid_spike
    run "[6] audit" audit
fi
if ((${#FAILED[@]})); then
    dump >"$OUT/test-k8s-dump.log" 2>&1
    log "end to end FAILED: ${FAILED[*]} (namespace dump: ${OUT#"$ROOT"/}/test-k8s-dump.log)"
    exit 1
fi
log "end to end passed"
