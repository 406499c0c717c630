#!/usr/bin/env bash
# Starts the local S3-compatible servers the tests use (tests/it/storage_s3.rs), idempotently:
# installs each from PyPI into a virtualenv of its own if missing, starts it on a loopback port
# if nothing answers there, and waits until it does. Safe to run again and again, also from tests
# running in parallel; CI runs it before the tests.
#
#   scripts/start-s3.sh [moto|localstack|all]      (default: all)
#
#   S3_TEST_PORT             moto's port (default 9310; tests: MEMOJI_TEST_S3_ENDPOINT)
#   S3_TEST_LOCALSTACK_PORT  LocalStack's port (default 9311; tests: MEMOJI_TEST_S3_LOCALSTACK_ENDPOINT)
#   S3_TEST_HOME             where the virtualenvs, logs and pid files live (~/.cache/memoji-s3)
#
# Two implementations, because each has blind spots (docs/storage.md):
# - moto: the AWS SDK's most used stand-in (SigV4, PUT/GET/HEAD/DELETE, Content-Type and
#   Cache-Control metadata, XML errors, bucket policies). Accepts any credentials.
# - LocalStack's S3 (localstack-core, run in host mode: no Docker): its own S3 implementation,
#   not moto's, written against AWS's behaviour. Needs Python 3.13 or newer, and exact versions of
#   its dependencies (scripts/localstack-requirements.txt), which it does not pin itself. It does
#   not enforce bucket policies (anyone may read any bucket) and, like moto, accepts any
#   signature.
# Both keep objects in memory: a restart starts empty. The tests use the credentials test/test.
set -euo pipefail

which="${1:-all}"
home="${S3_TEST_HOME:-${HOME:-/root}/.cache/memoji-s3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Pinned so a new release cannot change the servers under the tests.
moto_spec="${S3_TEST_MOTO:-moto[server]>=5,<6}"
# LocalStack: localstack-core[runtime] 2026.3.0 and its dependencies, all at exact versions.
localstack_spec="$here/localstack-requirements.txt"

answers() {
  # Any HTTP answer will do. (python3 rather than curl: it is on every machine.)
  python3 - "$1" >/dev/null 2>&1 <<'EOF'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
EOF
}

# The server this script started earlier under `name`, if it is still alive (a zombie is not).
alive() {
  local pid
  pid="$(cat "$home/$1.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]
}

# A Python of at least 3.13, for LocalStack (its code uses 3.13's warnings.deprecated).
python_for_localstack() {
  local py
  for py in python3 python3.13 python3.14 "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

install_moto() {
  local venv="$home/moto-venv"
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "start-s3: installing $moto_spec into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$moto_spec"
  fi
}

install_localstack() {
  local venv="$home/localstack-venv" python
  # Installed from exactly this requirements file, or installed (again) now.
  if ! cmp -s "$localstack_spec" "$venv/requirements.txt"; then
    python="$(python_for_localstack)" || {
      echo "start-s3: LocalStack needs Python 3.13 or newer, and none was found" >&2
      return 1
    }
    echo "start-s3: installing LocalStack ($localstack_spec) into $venv (with $python)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$localstack_spec"
    cp "$localstack_spec" "$venv/requirements.txt"
  fi
}

# setsid: a server outlives this script and the shell that ran it.
# 9>&-: a server must not inherit (and so hold for its whole life) the lock below.
launch_moto() {
  setsid "$home/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$1" >"$home/moto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$home/moto.pid"
}

launch_localstack() {
  # Only S3, on loopback, no DNS server, nothing downloaded or reported home.
  GATEWAY_LISTEN="127.0.0.1:$1" SERVICES=s3 DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 LOCALSTACK_VOLUME_DIR="$home/localstack-volume" \
    setsid "$home/localstack-venv/bin/python" -m localstack.runtime.main \
    >"$home/localstack.log" 2>&1 </dev/null 9>&- &
  echo $! >"$home/localstack.pid"
}

# ensure NAME PORT PROBE_PATH WAIT_SECONDS
ensure() {
  local name="$1" port="$2" url="http://127.0.0.1:$2$3" tries=$(($4 * 5)) restarted=no
  if answers "$url"; then
    echo "start-s3: $name already answers on port $port"
    return 0
  fi
  "install_$name"
  if alive "$name"; then
    echo "start-s3: $name (pid $(cat "$home/$name.pid")) is running but not answering yet; waiting"
  else
    echo "start-s3: starting $name on 127.0.0.1:$port (log: $home/$name.log)"
    "launch_$name" "$port"
  fi
  for _ in $(seq 1 "$tries"); do
    if answers "$url"; then
      echo "start-s3: $name ready on port $port"
      return 0
    fi
    if ! alive "$name" && [ "$restarted" = no ]; then
      # It was shutting down, or it died at start (e.g. the port was busy a moment ago).
      restarted=yes
      "launch_$name" "$port"
    fi
    sleep 0.2
  done
  echo "start-s3: $name did not answer at $url within $4 s; its log:" >&2
  tail -n 30 "$home/$name.log" >&2 || true
  return 1
}

mkdir -p "$home"
# Tests running in parallel may all call this script: one installs and starts, the rest wait.
# (Not the file `lock`: a moto started by this script's earlier versions holds that one.)
exec 9>"$home/start.lock"
flock 9
# The virtualenv of versions before LocalStack joined, reused rather than installed again.
if [ -x "$home/venv/bin/moto_server" ] && [ ! -e "$home/moto-venv" ]; then
  ln -s "$home/venv" "$home/moto-venv"
fi

case "$which" in
  moto) ensure moto "${S3_TEST_PORT:-9310}" / 20 ;;
  localstack) ensure localstack "${S3_TEST_LOCALSTACK_PORT:-9311}" /_localstack/health 90 ;;
  all)
    ensure moto "${S3_TEST_PORT:-9310}" / 20
    ensure localstack "${S3_TEST_LOCALSTACK_PORT:-9311}" /_localstack/health 90
    ;;
  *)
    echo "usage: $0 [moto|localstack|all]" >&2
    exit 2
    ;;
esac
