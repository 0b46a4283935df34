#!/usr/bin/env bash
# Renders every spec in examples/ and checks the output, and the install in deploy/, the way a
# cluster and a security scanner would: kubernetes-validate --strict (the built-in kinds, and the
# CRD in deploy/crd.yaml, against the Kubernetes OpenAPI schemas) and checkov (0 failed checks:
# the kubernetes framework on the rendered examples and on deploy/, the dockerfile framework on
# deploy/Dockerfile; the only skips are listed, with reasons, in ci/checkov-skips.yaml). Builds
# nothing: it runs the binary in $STATOR (default target/debug/stator). Exits non-zero on any
# failure.
#
#   cargo build -p stator && scripts/check-render.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stator="${STATOR:-$root/target/debug/stator}"
# The Kubernetes version k8s-openapi is built for (K8S_OPENAPI_ENABLED_VERSION in .cargo/config.toml).
kubernetes_version="${KUBERNETES_VERSION:-1.35.0}"

if [ ! -x "$stator" ]; then
    echo "check-render: no stator binary at $stator; run 'cargo build -p stator' or set STATOR" >&2
    exit 2
fi
bin="$("$root/scripts/python-tools.sh")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/out" "$work/log"

failed=0
specs=("$root"/examples/*.yaml)
for spec in "${specs[@]}"; do
    name="$(basename "$spec" .yaml)"
    if ! "$stator" render -f "$spec" -o "$work/out/$name" 2>"$work/log/$name"; then
        echo "check-render: FAIL: stator render -f $spec" >&2
        cat "$work/log/$name" >&2
        failed=1
    fi
done
# Operator mode: what the operator applies (owned by the Database, pods left to it, the operator
# admitted to the instance managers) must pass the same checks.
for spec in "${specs[@]}"; do
    name="$(basename "$spec" .yaml)-operator"
    if ! "$stator" render -f "$spec" -o "$work/out/$name" \
        --operator-owner-uid 0b5e1a7c-4f7d-4c1e-9a57-5a1f2d3c4b5e 2>"$work/log/$name"; then
        echo "check-render: FAIL: stator render -f $spec (operator mode)" >&2
        cat "$work/log/$name" >&2
        failed=1
    fi
done
# CSI volume snapshots (render options): a VolumeSnapshot of a replica's volume, and volumes
# created from it (the volume claim template's dataSource).
for spec in "$root"/examples/*backup*.yaml; do
    name="$(basename "$spec" .yaml)-snapshots"
    if ! "$stator" render -f "$spec" -o "$work/out/$name" --volume-snapshot snap-1 \
        --volume-snapshot-class csi-snapclass --restore-from-snapshot snap-0 \
        2>"$work/log/$name"; then
        echo "check-render: FAIL: stator render -f $spec --volume-snapshot ..." >&2
        cat "$work/log/$name" >&2
        failed=1
    fi
done
[ "$failed" -eq 0 ] || exit 1
rendered=("$work"/out/*/*.yaml)
echo "check-render: rendered ${#specs[@]} examples (plain and operator mode) into ${#rendered[@]} files"

# deploy/: every object of `stator install` (kustomization.yaml is kustomize's, not an object).
installed=("$root/deploy/crd.yaml" "$root/deploy/namespace.yaml" "$root/deploy/rbac.yaml"
    "$root/deploy/operator.yaml")

echo "check-render: kubernetes-validate --strict --kubernetes-version $kubernetes_version"
if "$bin/kubernetes-validate" --strict --quiet --kubernetes-version "$kubernetes_version" \
    "${rendered[@]}" "${installed[@]}"; then
    echo "check-render: kubernetes-validate: all $((${#rendered[@]} + ${#installed[@]})) files valid"
else
    echo "check-render: FAIL: kubernetes-validate found invalid objects (above)" >&2
    failed=1
fi

# Custom resources render emits (cert-manager Certificates, with spec.tls.issuerRef; CSI
# VolumeSnapshots, with --volume-snapshot) have no
# schema in kubernetes-validate (it only warns): they are checked, as strictly, against the CRD
# fixtures in tests/fixtures/ (every object of a fixture's kind must validate; unknown fields are
# refused as the API server's strict field validation does).
crds=("$root"/tests/fixtures/cert-manager/*.crd.yaml "$root"/tests/fixtures/volume-snapshot/*.crd.yaml)
echo "check-render: custom resources against ${crds[*]#"$root"/}"
if "$bin/python" - "${#crds[@]}" "${crds[@]}" "${rendered[@]}" <<'PY'
import sys, yaml, jsonschema
n = int(sys.argv[1]); crds, files = sys.argv[2:2 + n], sys.argv[2 + n:]
def strict(schema):
    # As a structural schema prunes and `kubectl --validate=strict` refuses: no unknown field.
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema
schemas = {}
for path in crds:
    crd = yaml.safe_load(open(path))
    for version in crd["spec"]["versions"]:
        key = (crd["spec"]["group"] + "/" + version["name"], crd["spec"]["names"]["kind"])
        schemas[key] = strict(version["schema"]["openAPIV3Schema"])
checked = failed = 0
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        schema = doc and schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if not schema:
            continue
        checked += 1
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
            failed += 1
            where = "/".join(str(p) for p in error.absolute_path)
            print(f"{path}: {doc['kind']} {doc['metadata'].get('name')}: {where}: {error.message}", file=sys.stderr)
print(f"check-render: {checked} custom resources checked, {failed} problems")
sys.exit(1 if failed or checked == 0 else 0)
PY
then :; else
    echo "check-render: FAIL: custom resources do not match their CRDs (above)" >&2
    failed=1
fi

# Offline: no platform API key, no download of external checks or guidelines.
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
# checkov NAME FRAMEWORK -d DIR | -f FILE: 0 failed checks, with the skips of ci/checkov-skips.yaml.
checkov() {
    local name=$1 framework=$2
    shift 2
    echo "check-render: checkov --framework $framework $* (skips: ci/checkov-skips.yaml)"
    if "$bin/checkov" --framework "$framework" "$@" --quiet --compact \
        --config-file "$root/ci/checkov-skips.yaml" --skip-download --output cli \
        >"$work/log/checkov-$name" 2>"$work/log/checkov-$name.err"; then
        grep -E "Passed checks|Failed checks" "$work/log/checkov-$name" || true
    else
        cat "$work/log/checkov-$name" "$work/log/checkov-$name.err" >&2
        echo "check-render: FAIL: checkov reports failed checks in $name (above)" >&2
        failed=1
    fi
}
checkov rendered kubernetes -d "$work/out"
checkov deploy kubernetes -d "$root/deploy"
checkov dockerfile dockerfile -f "$root/deploy/Dockerfile"

exit "$failed"
