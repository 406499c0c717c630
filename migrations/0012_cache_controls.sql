-- Cache controls (issue 15): per-user cache preferences, and the images of `bypass` jobs.

-- One row per user who set a preference (the admin API's /api/users/{user_id}/cache-preferences,
-- `memoji-worker user prefs set`). A NULL field is "not set": the arm's or the configuration's
-- value applies (job::policy). Read once per job by its primary key, only off the batched hit
-- path (which joins it into its own lookup).
CREATE TABLE IF NOT EXISTS memoji_user_cache_preferences (
    user_id          text PRIMARY KEY,
    max_age_days     integer CHECK (max_age_days IS NULL OR max_age_days >= 1),
    mode             text CHECK (mode IS NULL OR mode IN ('default', 'refresh', 'bypass', 'only_if_cached')),
    variants_opt_out boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The image a `bypass` job generated: stored under a path of its own (YYYY/MM/<hash>-j<job>.png),
-- never a cache entry. The cleanup deletes the object and the row once it is older than
-- cache.bypass_retention_hours.
CREATE TABLE IF NOT EXISTS memoji_bypass_images (
    job_id       uuid PRIMARY KEY,
    prompt_hash  text NOT NULL,
    storage_path text NOT NULL,
    image_bytes  bigint,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS memoji_bypass_images_age ON memoji_bypass_images (created_at);
