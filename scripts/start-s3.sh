#!/usr/bin/env bash
# Starts a local S3-compatible server for the tests (tests/it/storage_s3.rs), idempotently:
# installs moto's server from PyPI if it is missing, starts it on a loopback port if nothing answers
# there, and waits until it does. Safe to run again and again; CI runs it before the tests.
#
#   S3_TEST_PORT   port to listen on (default 9310; the tests read MEMOJI_TEST_S3_ENDPOINT,
#                  default http://127.0.0.1:9310)
#   S3_TEST_HOME   where the virtualenv, log and pid file live (default ~/.cache/memoji-s3)
#
# moto is the AWS SDK's most used stand-in, kept current with S3's API (SigV4, PUT/GET/HEAD/DELETE,
# Content-Type and Cache-Control metadata, XML errors). It accepts any credentials; the tests use
# test/test. It keeps objects in memory, so a restart starts empty.
set -euo pipefail

port="${S3_TEST_PORT:-9310}"
home="${S3_TEST_HOME:-${HOME:-/root}/.cache/memoji-s3}"
venv="$home/venv"
log="$home/moto.log"
pidfile="$home/moto.pid"
url="http://127.0.0.1:$port"
# Pinned to a major version so a new release cannot change the server under the tests.
moto_spec="${S3_TEST_MOTO:-moto[server]>=5,<6}"

answers() {
  # moto answers ListBuckets at / with 200 and XML. (python3 rather than curl: it is on every machine.)
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url/" \
    >/dev/null 2>&1
}

if answers; then
  echo "start-s3: an S3 server already answers at $url"
  exit 0
fi

mkdir -p "$home"
# Tests running in parallel may all call this script: one installs and starts, the rest wait.
exec 9>"$home/lock"
flock 9
if answers; then
  echo "start-s3: an S3 server already answers at $url"
  exit 0
fi
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "start-s3: installing $moto_spec into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$moto_spec"
fi

# The moto this script started earlier, if it is still alive (a zombie is not).
alive() {
  local pid
  pid="$(cat "$pidfile" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]
}

start() {
  echo "start-s3: starting moto on $url (log: $log)"
  # setsid: the server outlives this script and the shell that ran it.
  setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
}

if alive; then
  echo "start-s3: moto (pid $(cat "$pidfile")) is running but not answering yet; waiting"
else
  start
fi

restarted=no
for _ in $(seq 1 100); do
  if answers; then
    echo "start-s3: ready at $url"
    exit 0
  fi
  if ! alive && [ "$restarted" = no ]; then
    # It was shutting down, or it died at start (e.g. the port was busy a moment ago).
    restarted=yes
    start
  fi
  sleep 0.2
done
echo "start-s3: moto did not answer at $url within 20 s; its log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
