-- Cache warming (issue 14): entries made ahead of demand, the request history the popularity
-- model reads, and OpenAI batches in flight.

-- When warming (not a job) made an entry's image; NULL for entries made by jobs or imported.
-- A warmed entry starts with usage_count 0: nobody has asked for it yet.
ALTER TABLE memoji_cache ADD COLUMN IF NOT EXISTS warmed_at timestamptz;

-- One row per key per UTC day: how often the key was asked for (hits and misses), with the
-- canonical configuration so that it can be generated again after its entry was cleaned up.
-- Counts only: no user, no job. Pruned by the cleanup after cleanup.history_retention_days.
CREATE TABLE IF NOT EXISTS memoji_request_history (
    day           date    NOT NULL,
    prompt_hash   text    NOT NULL,
    prompt_config jsonb   NOT NULL,
    requests      integer NOT NULL DEFAULT 1,
    PRIMARY KEY (day, prompt_hash)
);
CREATE INDEX IF NOT EXISTS memoji_request_history_key ON memoji_request_history (prompt_hash);
