-- Per-arm rollups of A/B tests of cache strategies (issue 15 item 4; GET /api/experiments/…, the
-- dashboard's Experiments section, `memoji-worker experiments show`). Kept like the analytics
-- rollups of 0009: each worker process counts its settled jobs in memory (stats::analytics) and
-- adds them here with the statistics' flush, in the same transaction (db::experiments::record).
-- Nothing here is filled or read by scanning memoji_jobs or memoji_cache.

-- Jobs of users in an experiment's arm, per UTC hour. Jobs that reached the cache only
-- (invalid_job answers name their arm but are not counted). spend_sq_usd is the sum of each job's
-- cost_usd squared: with jobs and spend_usd it gives the variance of the cost per job (Welch's
-- interval). Durations: the 42 log-spaced buckets of memoji_analytics_hourly.
CREATE TABLE memoji_analytics_arms (
    experiment       text NOT NULL,
    hour             timestamptz NOT NULL,
    arm              text NOT NULL,
    jobs             bigint NOT NULL DEFAULT 0,
    hits             bigint NOT NULL DEFAULT 0,
    misses           bigint NOT NULL DEFAULT 0,
    generations      bigint NOT NULL DEFAULT 0,
    failures         bigint NOT NULL DEFAULT 0,
    spend_usd        double precision NOT NULL DEFAULT 0,
    saved_usd        double precision NOT NULL DEFAULT 0,
    spend_sq_usd     double precision NOT NULL DEFAULT 0,
    duration_buckets bigint[] NOT NULL,
    PRIMARY KEY (experiment, hour, arm)
);

-- The same per UTC day, written by the same statement, so that long spans (and a report of
-- everything since an experiment began) read one row per arm and day.
CREATE TABLE memoji_analytics_arms_daily (
    experiment       text NOT NULL,
    day              date NOT NULL,
    arm              text NOT NULL,
    jobs             bigint NOT NULL DEFAULT 0,
    hits             bigint NOT NULL DEFAULT 0,
    misses           bigint NOT NULL DEFAULT 0,
    generations      bigint NOT NULL DEFAULT 0,
    failures         bigint NOT NULL DEFAULT 0,
    spend_usd        double precision NOT NULL DEFAULT 0,
    saved_usd        double precision NOT NULL DEFAULT 0,
    spend_sq_usd     double precision NOT NULL DEFAULT 0,
    duration_buckets bigint[] NOT NULL,
    PRIMARY KEY (experiment, day, arm)
);
