#!/usr/bin/env bash
# Validates docker-compose.yml against the Compose Specification's JSON schema, with no container
# engine: check-jsonschema (PyPI) and the schema vendored beside this script, so it runs offline.
# CI runs it (.ci/run). Run it by hand after editing docker-compose.yml:
#
#   bash scripts/check-compose.sh [FILE...]     (default: docker-compose.yml)
#
# scripts/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec
# (Apache-2.0), commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6 (2026-06-23). To update it, copy
# a newer one over it and run this script.
#
#   CHECK_HOME   where the virtualenv lives (default ~/.cache/memoji-check-compose)
set -euo pipefail
cd "$(dirname "$0")/.."

home="${CHECK_HOME:-${HOME:-/root}/.cache/memoji-check-compose}"
venv="$home/venv"
# Pinned to a major version so a new release cannot change the verdict under CI.
spec="check-jsonschema>=0.39,<1"

if ! "$venv/bin/check-jsonschema" --version >/dev/null 2>&1; then
  mkdir -p "$home"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
fi

files=("$@")
[ ${#files[@]} -gt 0 ] || files=(docker-compose.yml)
"$venv/bin/check-jsonschema" --schemafile scripts/compose-spec.json "${files[@]}"
