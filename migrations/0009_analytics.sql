-- Analytics rollups (issue 16; CONTRACT.md §8, GET /api/analytics/…, the dashboard, `report`).
-- Kept as jobs complete: each worker process counts its settled jobs in memory (src/stats) and adds
-- them here with the statistics' flush (about once a second), in one statement
-- (db::analytics::record). Nothing here is ever filled or read by scanning memoji_jobs or
-- memoji_cache, so reads cost the same at 10 M rows as at 10.

-- Job events per UTC hour. Durations and queue lags are histograms over fixed log-spaced buckets
-- (bucket i counts values up to 2^(i/2) ms; the last one everything above), so p50/p95 of any range
-- are computed from the summed buckets.
CREATE TABLE memoji_analytics_hourly (
    hour             timestamptz PRIMARY KEY,
    jobs             bigint NOT NULL DEFAULT 0,
    hits             bigint NOT NULL DEFAULT 0,
    misses           bigint NOT NULL DEFAULT 0,
    generations      bigint NOT NULL DEFAULT 0,
    failures         bigint NOT NULL DEFAULT 0,
    invalid          bigint NOT NULL DEFAULT 0,
    spend_usd        double precision NOT NULL DEFAULT 0,
    saved_usd        double precision NOT NULL DEFAULT 0,
    duration_buckets bigint[] NOT NULL,
    lag_buckets      bigint[] NOT NULL
);

-- Failed jobs per hour and error code.
CREATE TABLE memoji_analytics_failures (
    hour     timestamptz NOT NULL,
    code     text NOT NULL,
    failures bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, code)
);

-- Jobs per UTC day by one attribute's value (dimension: model, size, quality, gesture,
-- family_type, hair, skin_tone, color_theme, accessory).
CREATE TABLE memoji_analytics_breakdown (
    day         date NOT NULL,
    dimension   text NOT NULL,
    value       text NOT NULL,
    jobs        bigint NOT NULL DEFAULT 0,
    hits        bigint NOT NULL DEFAULT 0,
    misses      bigint NOT NULL DEFAULT 0,
    spend_usd   double precision NOT NULL DEFAULT 0,
    saved_usd   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, dimension, value)
);

-- Uses of each configuration (cache key) since the beginning, with the image it was last served
-- as, for the top lists. The descending indexes answer "top N" without sorting the table.
CREATE TABLE memoji_analytics_configs (
    prompt_hash  text PRIMARY KEY,
    uses         bigint NOT NULL DEFAULT 0,
    hits         bigint NOT NULL DEFAULT 0,
    generations  bigint NOT NULL DEFAULT 0,
    spend_usd    double precision NOT NULL DEFAULT 0,
    saved_usd    double precision NOT NULL DEFAULT 0,
    label        text NOT NULL DEFAULT '',
    model        text,
    storage_path text,
    image_url    text,
    last_used_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memoji_analytics_configs_uses_idx ON memoji_analytics_configs (uses DESC);
CREATE INDEX memoji_analytics_configs_saved_idx ON memoji_analytics_configs (saved_usd DESC);

-- Spend per user id (as the jobs give it; nothing else about users) since the beginning.
CREATE TABLE memoji_analytics_users (
    user_id      text PRIMARY KEY,
    jobs         bigint NOT NULL DEFAULT 0,
    generations  bigint NOT NULL DEFAULT 0,
    spend_usd    double precision NOT NULL DEFAULT 0,
    saved_usd    double precision NOT NULL DEFAULT 0,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memoji_analytics_users_spend_idx ON memoji_analytics_users (spend_usd DESC);

-- Adds two bucket arrays element by element (NULL counts as zeros).
CREATE FUNCTION memoji_analytics_add_buckets(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(array_agg(COALESCE(x, 0) + COALESCE(y, 0) ORDER BY i), '{}')
      FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;
