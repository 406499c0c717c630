#!/usr/bin/env bash
# Times every analytics endpoint and the dashboard against a scratch database holding 10 M cache
# rows, 10 M job rows and 90 days of rollups (BENCHMARKS.md, "Analytics at 10 M rows").
#
#   scripts/bench-analytics.sh [path/to/memoji-worker]     (default: target/debug/memoji-worker)
#
# ROWS (10 M) sets the configurations, cache rows and job rows; SOURCE_ROWS=0 leaves the cache and
# job tables empty. The database (memoji_bench_analytics, on 127.0.0.1:5432) is seeded once (resumable) and kept for later
# runs; drop it with `dropdb -h 127.0.0.1 -U postgres memoji_bench_analytics`. The worker runs
# with the placeholder generator and a broker address nothing listens on, so it serves its admin
# API but takes no jobs and declares nothing on the real broker.
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/debug/memoji-worker}
DB=memoji_bench_analytics
URL=postgres://postgres@127.0.0.1:5432/$DB
PORT=${PORT:-18389}
ROWS=${ROWS:-10000000}
PSQL=(psql -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1 -qAt)
export DATABASE_URL=$URL MEMOJI__DATABASE__URL=$URL

"$BIN" migrate >/dev/null 2>&1

# seed <table> <rows wanted> <INSERT … SELECT … FROM generate_series(:from, :to) AS g>: adds rows a
# million at a time until the table holds that many (so an interrupted run resumes).
seed() {
  local table=$1 want=$2 sql=$3 have
  have=$("${PSQL[@]}" -c "SELECT count(*) FROM $table")
  while [ "$have" -lt "$want" ]; do
    local to=$(( have + 1000000 < want ? have + 1000000 : want ))
    "${PSQL[@]}" -c "$(printf '%s' "${sql//:from/$((have + 1))}" | sed "s/:to/$to/g")" >/dev/null
    have=$to
    echo "  $table: $have rows ($(( $(date +%s) - start )) s)" >&2
  done
}
# bulk <table> <rows wanted> <sql>: seed, with the table's non-unique indexes dropped while it
# loads and built once after (at 10 M rows, index upkeep per row is most of the seeding time). The
# dropped definitions are kept in bench_dropped_indexes until rebuilt, so an interrupted run that
# resumes still rebuilds them.
bulk() {
  local table=$1
  "${PSQL[@]}" -c "CREATE TABLE IF NOT EXISTS bench_dropped_indexes (name text PRIMARY KEY, def text)"
  if [ "$("${PSQL[@]}" -c "SELECT count(*) FROM $table")" -lt "$2" ]; then
    "${PSQL[@]}" -c "INSERT INTO bench_dropped_indexes
                       SELECT indexname, indexdef FROM pg_indexes
                        WHERE tablename = '$table' AND indexdef NOT LIKE 'CREATE UNIQUE%'
                       ON CONFLICT DO NOTHING" >/dev/null
    "${PSQL[@]}" -c "SELECT name FROM bench_dropped_indexes WHERE def LIKE '% ON public.$table %'" |
      while read -r name; do "${PSQL[@]}" -c "DROP INDEX IF EXISTS $name"; done
    seed "$@"
  fi
  "${PSQL[@]}" -c "SELECT name FROM bench_dropped_indexes WHERE def LIKE '% ON public.$table %'" |
    while read -r name; do
      "${PSQL[@]}" -c "SELECT def FROM bench_dropped_indexes WHERE name = '$name'" |
        { read -r def; "${PSQL[@]}" -c "SET maintenance_work_mem = '512MB'" -c "$def"; }
      "${PSQL[@]}" -c "DELETE FROM bench_dropped_indexes WHERE name = '$name'"
      echo "  $table: rebuilt $name ($(( $(date +%s) - start )) s)" >&2
    done
}
start=$(date +%s)
HOURS=$((90 * 24))
if [ "$("${PSQL[@]}" -c "SELECT count(*) FROM memoji_analytics_hourly")" -lt "$HOURS" ]; then
  "${PSQL[@]}" <<SQL
TRUNCATE memoji_analytics_hourly, memoji_analytics_failures, memoji_analytics_breakdown;
-- 90 days of hours: about 4,600 jobs an hour (10 M jobs over 90 days).
INSERT INTO memoji_analytics_hourly
SELECT date_trunc('hour', now()) - h * interval '1 hour', 4630, 3080, 1500, 1480, 20, 30,
       1480 * 0.042, 3080 * 0.042,
       ARRAY(SELECT CASE WHEN i BETWEEN 6 AND 14 THEN 300 WHEN i BETWEEN 24 AND 28 THEN 200
                         ELSE 2 END FROM generate_series(0, 41) AS i),
       ARRAY(SELECT CASE WHEN i < 12 THEN 380 ELSE 1 END FROM generate_series(0, 41) AS i)
  FROM generate_series(0, $HOURS - 1) AS h;
INSERT INTO memoji_analytics_failures
SELECT date_trunc('hour', now()) - h * interval '1 hour', code, 10
  FROM generate_series(0, $HOURS - 1) AS h,
       unnest(ARRAY['out_of_credits', 'generation_failed', 'invalid_job']) AS code;
-- 90 days × 9 attributes × 40 values each.
INSERT INTO memoji_analytics_breakdown
SELECT (now() AT TIME ZONE 'UTC')::date - d, dim, dim || '-' || v, 100 + v, 60 + v, 40, 1.68, 2.52
  FROM generate_series(0, 89) AS d,
       unnest(ARRAY['model', 'size', 'quality', 'gesture', 'family_type', 'hair', 'skin_tone',
                    'color_theme', 'accessory']) AS dim,
       generate_series(1, 40) AS v;
SQL
fi
if [ "$("${PSQL[@]}" -c "SELECT count(*) FROM memoji_analytics_daily")" -lt 90 ]; then
  "${PSQL[@]}" <<SQL
TRUNCATE memoji_analytics_daily;
INSERT INTO memoji_analytics_daily
SELECT (now() AT TIME ZONE 'UTC')::date - d, 24 * 4630, 24 * 3080, 24 * 1500, 24 * 1480, 24 * 20,
       24 * 30, 24 * 1480 * 0.042, 24 * 3080 * 0.042,
       ARRAY(SELECT CASE WHEN i BETWEEN 6 AND 14 THEN 7200 WHEN i BETWEEN 24 AND 28 THEN 4800
                         ELSE 48 END FROM generate_series(0, 41) AS i),
       ARRAY(SELECT CASE WHEN i < 12 THEN 9120 ELSE 24 END FROM generate_series(0, 41) AS i)
  FROM generate_series(0, 89) AS d;
SQL
fi
# One rollup row per cache key (10 M) and per user (1 M).
seed memoji_analytics_configs "$ROWS" "INSERT INTO memoji_analytics_configs
    (prompt_hash, uses, hits, generations, spend_usd, saved_usd, label, model, storage_path, last_used_at)
  SELECT md5('seed-' || g) || md5('key-' || g), 1 + g % 997, g % 997, 1, 0.042, (g % 997) * 0.042,
         'father · wave · short hair · medium skin · pastel-blue', 'gpt-image-1',
         '2026/11/' || md5('seed-' || g) || md5('key-' || g) || '.png', now() - (g % 90) * interval '1 day'
    FROM generate_series(:from, :to) AS g"
seed memoji_analytics_users 1000000 "INSERT INTO memoji_analytics_users
  SELECT 'user-' || g, 10 + g % 50, 1 + g % 7, (1 + g % 7) * 0.042, (g % 43) * 0.042,
         now() - (g % 90) * interval '1 day'
    FROM generate_series(:from, :to) AS g"
# The source tables at 10 M rows (SOURCE_ROWS=0 skips them): the endpoints never read them, but
# they share the database's memory and disk with the rollups.
SOURCE_ROWS=${SOURCE_ROWS:-$ROWS}
bulk memoji_cache "$SOURCE_ROWS" "INSERT INTO memoji_cache (prompt_hash, image_url, prompt_config,
      generation_cost, usage_count, created_at, updated_at, last_used_at, archived, generator)
  SELECT md5('seed-' || g) || md5('key-' || g), 'https://cdn.example.com/2025/01/seed-' || g || '.png',
         '{\"model\":\"gpt-image-1\"}'::jsonb, 0.042, g % 10, now() - (g % 400) * interval '1 day',
         now() - (g % 400) * interval '1 day', now() - (g % 90) * interval '1 day', false, 'openai'
    FROM generate_series(:from, :to) AS g"
bulk memoji_jobs "$SOURCE_ROWS" "INSERT INTO memoji_jobs (job_id, user_id, prompt_hash, status, result,
      created_at, updated_at)
  SELECT md5('job-' || g)::uuid, 'user-' || (g % 1000000), md5('seed-' || g) || md5('key-' || g),
         'succeeded', jsonb_build_object('status', 'succeeded', 'cached', g % 3 <> 0, 'cost_usd', 0.042),
         now() - (g % 90) * interval '1 day', now() - (g % 90) * interval '1 day'
    FROM generate_series(:from, :to) AS g"
"${PSQL[@]}" -c "VACUUM ANALYZE" 2>/dev/null || true
"${PSQL[@]}" -c "SELECT 'rows: cache ' || (SELECT count(*) FROM memoji_cache) || ', jobs ' || (SELECT count(*) FROM memoji_jobs)
                 || ', hourly ' || (SELECT count(*) FROM memoji_analytics_hourly)
                 || ', breakdown ' || (SELECT count(*) FROM memoji_analytics_breakdown)
                 || ', configs ' || (SELECT count(*) FROM memoji_analytics_configs)
                 || ', users ' || (SELECT count(*) FROM memoji_analytics_users)" >&2

log=$(mktemp)
MEMOJI__HTTP__BIND=127.0.0.1:$PORT MEMOJI__AMQP__URL=amqp://guest:guest@127.0.0.1:1/%2f \
  ADMIN_TOKEN=bench-token MEMOJI__LOG__FORMAT=plain RUST_LOG=warn \
  "$BIN" run --generator placeholder 2>"$log" &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
  sleep 0.1
done

RUNS=${RUNS:-30}
printf '| endpoint | median ms | p95 ms | max ms | bytes |\n| --- | ---: | ---: | ---: | ---: |\n'
for path in \
  "/api/analytics/summary?since=7d" \
  "/api/analytics/summary?since=90d" \
  "/api/analytics/series?step=hour&since=48h" \
  "/api/analytics/series?step=hour&since=14d" \
  "/api/analytics/series?step=day&since=90d" \
  "/api/analytics/breakdowns?since=30d" \
  "/api/analytics/breakdowns?since=90d" \
  "/api/analytics/top-configs?by=uses&limit=10" \
  "/api/analytics/top-configs?by=saved&limit=100" \
  "/api/analytics/top-users?limit=10" \
  "/api/cache/stats" \
  "/?since=7d" \
  "/?since=90d"; do
  times=()
  bytes=0
  for _ in $(seq 1 "$RUNS"); do
    out=$(curl -fsS -o /dev/null -H "Authorization: Bearer bench-token" \
            -w '%{time_total} %{size_download}' "http://127.0.0.1:$PORT$path")
    times+=("${out% *}")
    bytes=${out#* }
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v path="$path" -v bytes="$bytes" '
    { t[NR] = $1 * 1000 }
    END { printf "| `%s` | %.1f | %.1f | %.1f | %d |\n", path, t[int((NR + 1) / 2)],
                 t[int(NR * 0.95 + 0.5)], t[NR], bytes }'
done
