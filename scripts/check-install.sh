#!/usr/bin/env bash
# Applies deploy/ (the output of `stator install`) to a real Kubernetes control plane
# (../shared/kube/start.sh: kube-apiserver with RBAC and Pod Security admission, and
# kube-controller-manager) and proves, with the operator's own ServiceAccount token, that:
#
# - the server accepts every object (server-side apply, for real) and the CRD is Established;
# - the Deployment's pod passes the namespace's `restricted` Pod Security Standard (the
#   ReplicaSet controller could create it; with no scheduler or kubelet here it stays Pending);
# - the RBAC allows exactly the verbs the operator of issue 10 uses, and refuses the rest;
# - every rendered example (plain and operator mode) is accepted with strict field validation
#   (server-side dry run), its cert-manager Certificates against the CRD fixture of
#   tests/fixtures/cert-manager.
#
# Scope of what it shows: the ClusterRole is bound cluster-wide (Databases may be in any
# namespace), so every verb it grants holds in every namespace, kube-system included. The
# operator can get a Secret whose name it knows anywhere, but can never list or watch Secrets,
# nor patch, update or delete one. The Lease rules hold only in the operator's namespace.
#
# Stops the control plane on exit, failure included. Takes about 30 s (10 s of it start-up).
#
#   cargo build --workspace --bin stator && scripts/check-install.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kube_dir="${STATOR_SHARED_KUBE:-$root/../shared/kube}"
ns=stator-system
sa=stator-operator

if [ ! -x "$kube_dir/start.sh" ]; then
    echo "check-install: no control plane at $kube_dir/start.sh (set STATOR_SHARED_KUBE)" >&2
    exit 2
fi

work="$(mktemp -d)"
cleanup() {
    "$kube_dir/stop.sh" "$work/kube" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

eval "$("$kube_dir/start.sh" "$work/kube")"
admin() { "$STATOR_KUBECTL" "$@"; }

echo "check-install: kubectl apply --server-side -k deploy/"
admin apply --server-side --field-manager=stator-install -k "$root/deploy" >"$work/apply.log"
sed 's/^/  /' "$work/apply.log"
admin wait --for=condition=Established --timeout=30s crd/databases.stator.dev >/dev/null
echo "check-install: crd/databases.stator.dev is Established"
# cert-manager's Certificate CRD (the fixture of tests/fixtures/cert-manager stands in for a
# cert-manager install): the operator's rules on Certificates, and the dry run of the rendered
# examples below, need the kind to exist.
admin apply --server-side -f "$root/tests/fixtures/cert-manager/certificates.crd.yaml" >/dev/null
admin wait --for=condition=Established --timeout=30s crd/certificates.cert-manager.io >/dev/null
# The CSI VolumeSnapshot CRD (tests/fixtures/volume-snapshot stands in for the external
# snapshotter): the dry run of a render with --volume-snapshot below needs the kind.
admin apply --server-side -f "$root/tests/fixtures/volume-snapshot/volumesnapshots.crd.yaml" >/dev/null
admin wait --for=condition=Established --timeout=30s crd/volumesnapshots.snapshot.storage.k8s.io >/dev/null

# The ReplicaSet controller creates the operator's pod only if Pod Security admission lets it.
pod=""
for _ in $(seq 1 60); do
    pod="$(admin -n "$ns" get pods -l app.kubernetes.io/name=stator-operator -o name 2>/dev/null)"
    [ -n "$pod" ] && break
    sleep 0.5
done
if [ -z "$pod" ]; then
    echo "check-install: FAIL: no operator pod was created; the ReplicaSet's events:" >&2
    admin -n "$ns" get events >&2 || true
    exit 1
fi
echo "check-install: $pod was admitted under pod-security.kubernetes.io/enforce=restricted"

# A kubeconfig holding only the operator's token: every request below is the operator's.
server="$(admin config view -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(admin config view -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
token="$(admin -n "$ns" create token "$sa" --duration=10m)"
cat >"$work/operator.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "$server", certificate-authority: "$ca"}
users:
- name: operator
  user: {token: "$token"}
contexts:
- name: operator
  context: {cluster: test, user: operator}
current-context: operator
EOF
chmod 600 "$work/operator.kubeconfig"
unset token
operator() { "$STATOR_KUBECTL" --kubeconfig "$work/operator.kubeconfig" "$@"; }
whoami="$(operator auth whoami -o jsonpath='{.status.userInfo.username}')"
[ "$whoami" = "system:serviceaccount:$ns:$sa" ] \
    || { echo "check-install: FAIL: the token is $whoami" >&2; exit 1; }
echo "check-install: acting as $whoami"

failed=0
# The answers are asked 8 at a time and printed in the order asked: $work/can-i/NNN each.
mkdir "$work/can-i"
asked=0
record() { # line: printed in order by report
    asked=$((asked + 1))
    printf '%s\n' "$1" >"$work/can-i/$(printf %03d "$asked")"
}
# expect yes|no VERB RESOURCE [kubectl auth can-i flags...]
expect() {
    local want=$1
    shift
    asked=$((asked + 1))
    (
        got=no
        if operator auth can-i --quiet "$@" 2>/dev/null; then got=yes; fi
        if [ "$got" = "$want" ]; then
            printf '  ok   %-3s %s\n' "$want" "$*"
        else
            printf '  FAIL %-3s %s (the server says %s)\n' "$want" "$*" "$got"
        fi
    ) >"$work/can-i/$(printf %03d "$asked")" &
    if [ $((asked % 8)) -eq 0 ]; then wait; fi
}
report() {
    wait
    cat "$work"/can-i/*
    if grep -q '^  FAIL' "$work"/can-i/*; then failed=1; fi
}

record "check-install: what the operator may do (kubectl auth can-i, its own token)"
for verb in get list watch patch update; do expect yes "$verb" databases.stator.dev -n shop; done
expect yes list databases.stator.dev --all-namespaces
for verb in get patch update; do expect yes "$verb" databases.stator.dev --subresource=status -n shop; done
expect yes update databases.stator.dev --subresource=finalizers -n shop
for kind in statefulsets.apps services configmaps serviceaccounts poddisruptionbudgets.policy \
    networkpolicies.networking.k8s.io; do
    for verb in get list watch create patch delete; do expect yes "$verb" "$kind" -n shop; done
done
expect yes create secrets -n shop
for verb in get create patch; do expect yes "$verb" certificates.cert-manager.io -n shop; done
expect yes get secrets/shop-db-credentials -n shop
for verb in get list watch patch delete; do expect yes "$verb" pods -n shop; done
for verb in get list watch delete; do expect yes "$verb" persistentvolumeclaims -n shop; done
expect yes create events.events.k8s.io -n shop
expect yes patch events.events.k8s.io -n shop
expect yes create leases.coordination.k8s.io -n "$ns"
expect yes get leases.coordination.k8s.io/stator-operator -n "$ns"
expect yes update leases.coordination.k8s.io/stator-operator -n "$ns"
# Cluster-wide by design: named Secret reads hold in every namespace (see the header).
expect yes get secrets/anything -n kube-system

record "check-install: what it may not do"
expect no create databases.stator.dev -n shop
expect no delete databases.stator.dev -n shop
expect no deletecollection databases.stator.dev -n shop
for verb in update deletecollection; do expect no "$verb" statefulsets.apps -n shop; done
for verb in list watch patch update delete; do expect no "$verb" secrets -n shop; done
expect no list secrets -n kube-system
for verb in update delete; do expect no "$verb" certificates.cert-manager.io -n shop; done
expect no list secrets --all-namespaces
expect no create pods -n shop
expect no update pods -n shop
expect no create pods --subresource=exec -n shop
expect no create pods --subresource=eviction -n shop
expect no get pods --subresource=log -n shop
expect no deletecollection pods -n shop
expect no create persistentvolumeclaims -n shop
expect no patch persistentvolumeclaims -n shop
expect no create events -n shop
expect no update leases.coordination.k8s.io/stator-operator -n kube-system
expect no update leases.coordination.k8s.io/another-lease -n "$ns"
expect no create leases.coordination.k8s.io -n kube-system
expect no delete leases.coordination.k8s.io/stator-operator -n "$ns"
expect no get nodes
expect no create namespaces
expect no delete namespaces
expect no create clusterroles.rbac.authorization.k8s.io
expect no create rolebindings.rbac.authorization.k8s.io -n shop
expect no bind clusterroles.rbac.authorization.k8s.io
expect no escalate roles.rbac.authorization.k8s.io -n shop
expect no impersonate serviceaccounts -n shop
expect no create serviceaccounts --subresource=token -n shop
expect no create customresourcedefinitions.apiextensions.k8s.io
expect no '*' '*' --all-namespaces
report

# Real requests, not only reviews: server-side apply creates an owned object with create+patch
# (no update), the Lease is created and renewed, and listing Secrets is refused.
echo "check-install: real requests with the operator's token"
admin create namespace shop >/dev/null
cat >"$work/configmap.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: shop-db-config, namespace: shop}
data: {probe: "1"}
EOF
request() { # description command...
    local what=$1
    shift
    if "$@" >"$work/request.log" 2>&1; then
        echo "  ok   $what"
    else
        echo "  FAIL $what:" >&2
        cat "$work/request.log" >&2
        failed=1
    fi
}
refused() { # description command...
    local what=$1
    shift
    if "$@" >"$work/request.log" 2>&1; then
        echo "  FAIL $what: the server allowed it" >&2
        failed=1
    elif grep -q Forbidden "$work/request.log"; then
        echo "  ok   $what: Forbidden"
    else
        echo "  FAIL $what: failed, but not as Forbidden:" >&2
        cat "$work/request.log" >&2
        failed=1
    fi
}
request "server-side apply creates a ConfigMap" \
    operator apply --server-side --field-manager=stator -f "$work/configmap.yaml"
request "a patch changes it" \
    operator patch configmap shop-db-config -n shop --type=merge -p '{"data":{"probe":"2"}}'
cat >"$work/lease.yaml" <<EOF
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: stator-operator, namespace: $ns}
spec: {holderIdentity: check-install, leaseDurationSeconds: 15}
EOF
request "create the Lease" operator create -f "$work/lease.yaml"
request "renew the Lease" operator replace -f "$work/lease.yaml"
refused "list Secrets in kube-system" operator get secrets -n kube-system
refused "delete the Database CRD" operator delete crd databases.stator.dev

# The rendered examples (plain and operator mode): the API server accepts every object, with
# strict field validation (server-side apply, dry run; Certificates against the CRD fixture).
stator="${STATOR:-${CARGO_TARGET_DIR:-$root/target}/debug/stator}"
echo "check-install: rendered examples, server-side dry run ($stator)"
mkdir "$work/render"
for spec in "$root"/examples/*.yaml; do
    name="$(basename "$spec" .yaml)"
    ns="$(sed -n 's/^  namespace: *//p' "$spec" | head -n1)"
    ns="${ns:-default}"
    admin get namespace "$ns" >/dev/null 2>&1 || admin create namespace "$ns" >/dev/null
    modes=(plain operator)
    # Examples with backups: also with a VolumeSnapshot and volumes restored from one.
    case "$name" in *backup*) modes+=(snapshots) ;; esac
    for mode in "${modes[@]}"; do
        out="$work/render/$name-$mode"
        flags=()
        [ "$mode" = operator ] && flags=(--operator-owner-uid 0b5e1a7c-4f7d-4c1e-9a57-5a1f2d3c4b5e)
        [ "$mode" = snapshots ] && flags=(--volume-snapshot snap-1 \
            --volume-snapshot-class csi-snapclass --restore-from-snapshot snap-0)
        if ! "$stator" render -f "$spec" -o "$out" "${flags[@]}" 2>"$work/render.log"; then
            echo "  FAIL stator render -f examples/$name.yaml ($mode):" >&2
            cat "$work/render.log" >&2
            failed=1
            continue
        fi
        request "examples/$name.yaml ($mode): $(ls "$out" | wc -l) files accepted" \
            admin apply --server-side --dry-run=server --field-manager=stator -f "$out"
    done
done

if [ "$failed" -ne 0 ]; then
    echo "check-install: FAIL (above)" >&2
    exit 1
fi
echo "check-install: the API server accepts deploy/ and the operator's RBAC is as intended"
