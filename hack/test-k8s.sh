#!/usr/bin/env bash
# End to end on a real cluster (hack/k8s.sh, images loaded by hack/images.sh): `make test-k8s`.
#
#   1. helm install of the chart with the bundled Redis and PostgreSQL (ci/kind-values.yaml + hack/k8s/values.yaml)
#   2. the operator Ready; the FlashSale hack/k8s/flashsale.yaml Live, its API and worker pods Ready
#   3. helm test: the k6 smoke in-cluster, then the integrity audit
#   4. a spike Job made from the chart's CronJob (k6, then the audit)
#   5. the operator pod killed (no grace): replaced, Ready, the sale still reconciled; audit
#   6. an API pod deleted in the middle of a spike; the spike's own audit, the Deployment back to its replicas
# Each step prints how long it took; any failure dumps the namespace (pods, events, logs) and exits non-zero.
# All traffic runs inside the cluster's network namespace: kubectl and helm speak to its loopback, k6 to the
# sale's Service. The release stays installed afterwards (`make k8s-down` removes everything).
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
STEP=0
T0=$SECONDS

log() { printf '==> %s\n' "$*" >&2; }
k() { "$ROOT/hack/k8s.sh" exec "$KUBECTL" -n "$NS" "$@"; }
h() { "$ROOT/hack/k8s.sh" exec "$HELM" "$@"; }
step() {
    STEP=$((STEP + 1))
    log "[$STEP/6] $* (at ${SECONDS}s)"
}

dump() {
    set +e
    log "failed at step $STEP: the namespace $NS"
    k get all,flashsales,jobs,pdb -o wide
    k get events --sort-by=.lastTimestamp | tail -n 40
    local pod
    for pod in $(k get pods -o name); do
        echo "--- $pod"
        k logs "$pod" --all-containers --prefix --tail=60
    done
}
trap 'dump' ERR

# Wait for Job $1 to finish; print its pods' logs; fail unless it completed.
run_job() {
    local job="$1" status
    for ((i = 0; i < 600; i++)); do
        status="$(k get job "$job" -o jsonpath='{.status.succeeded}/{.status.failed}')"
        [[ "$status" == 1/* || "$status" == */1 ]] && break
        sleep 1
    done
    k logs "job/$job" --all-containers --prefix | grep -E 'k6\]|audit|CLEAN|VIOLATION|requests|checks|http_req_failed' || true
    [[ "$status" == 1/* ]] || {
        log "job $job did not complete ($status)"
        return 1
    }
}

# The integrity audit of the sale, run in a worker pod (the ledger, Redis and the queue; no k6 summary).
audit() {
    k exec "deployment/$SALE-worker" -- stampede audit --sale "$NS/$SALE" --wait 120 | tail -n 6
}

# The network rule, checked on the namespace itself (no packet is sent to find out): its only links are loopback,
# the pods' bridge and their veths, and its default route is unreachable, so nothing in it can reach an address
# outside the cluster.
links="$("$ROOT/hack/k8s.sh" exec ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -vE '^(lo|cni0|veth[0-9a-f]+)$' || true)"
[[ -z "$links" ]] || {
    log "the cluster's network namespace has a link out: $links"
    exit 1
}
"$ROOT/hack/k8s.sh" exec ip route show default | grep -qx 'unreachable default' || {
    log "the cluster's network namespace has a default route"
    exit 1
}

step "helm install (bundled Redis and PostgreSQL, images $TAG)"
h upgrade --install "$RELEASE" "$ROOT/charts/stampede" --namespace "$NS" --create-namespace \
    -f "$ROOT/charts/stampede/ci/kind-values.yaml" -f "$ROOT/hack/k8s/values.yaml" \
    --set "image.tag=$TAG,redis.image.tag=$TAG,postgresql.image.tag=$TAG,loadTest.image.tag=$TAG" \
    --wait --timeout 10m
k rollout status "statefulset/$RELEASE-operator" --timeout=5m

step "FlashSale $SALE Live, its API and worker pods Ready"
start="$(date -u -d '-1 min' +%Y-%m-%dT%H:%M:%SZ)"
end="$(date -u -d '+2 hour' +%Y-%m-%dT%H:%M:%SZ)"
sed -e "s/SALE_START/$start/" -e "s/SALE_END/$end/" "$ROOT/hack/k8s/flashsale.yaml" | k apply -f -
k wait "flashsale/$SALE" --for=jsonpath='{.status.phase}'=Live --timeout=5m
for component in api worker; do
    k wait "deployment/$SALE-$component" --for=create --timeout=2m
    k rollout status "deployment/$SALE-$component" --timeout=5m
done
k get pods -o wide

step "helm test (k6 smoke in-cluster, then the audit)"
h test "$RELEASE" -n "$NS" --logs --timeout 10m | grep -vE '^\s*$' | tail -n 30

step "spike Job from the CronJob"
k create job spike-1 --from="cronjob/$RELEASE-k6-spike"
run_job spike-1

step "operator pod killed and replaced"
old="$(k get pod "$RELEASE-operator-0" -o jsonpath='{.metadata.uid}')"
k delete pod "$RELEASE-operator-0" --grace-period=0 --force --wait=false
for ((i = 0; i < 120; i++)); do
    new="$(k get pod "$RELEASE-operator-0" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)"
    [[ -n "$new" && "$new" != "$old" ]] && break
    sleep 1
done
[[ -n "$new" && "$new" != "$old" ]] || {
    log "the operator pod was not replaced"
    false
}
k wait pod "$RELEASE-operator-0" --for=condition=Ready --timeout=5m
k rollout status "statefulset/$RELEASE-operator" --timeout=5m
audit

step "API pod deleted in the middle of a spike"
k create job spike-2 --from="cronjob/$RELEASE-k6-spike"
# Once k6 has been running for a stage, delete one of the sale's API pods.
k wait pod -l job-name=spike-2 --for=jsonpath='{.status.initContainerStatuses[?(@.name=="k6")].state.running}' \
    --timeout=5m >/dev/null 2>&1 || true
sleep 12
victim="$(k get pods -l "app.kubernetes.io/instance=$SALE,app.kubernetes.io/component=api" -o name | head -n1)"
[[ -n "$victim" ]] || victim="$(k get pods -o name | grep -m1 "$SALE-api")"
log "deleting $victim"
k delete "$victim" --wait=false
run_job spike-2
k rollout status "deployment/$SALE-api" --timeout=5m
audit

trap - ERR
log "end to end passed in $((SECONDS - T0))s"
