-- Cache warming through OpenAI's Batch API (issue 14, `warm --batch`) and the warming history the
-- dashboard shows (issue 16).

-- One row per batch the worker submitted (or was about to submit). A batch stays open
-- (finished_at NULL) until its output has been downloaded, checked, stored and recorded; any
-- `memoji-worker warm --resume`, `warm batches` or a worker's batch sweep picks up an open batch
-- after a crash.
CREATE TABLE IF NOT EXISTS memoji_warm_batches (
    id              uuid        PRIMARY KEY,
    -- from | history | predict | refresh | schedule (what made its list)
    source          text        NOT NULL,
    -- OpenAI's batch id and input file; NULL until OpenAI answered.
    openai_batch_id text        UNIQUE,
    input_file_id   text,
    -- submitting (not yet created at OpenAI), then OpenAI's own status: validating,
    -- in_progress, finalizing, completed, failed, expired, cancelling, cancelled;
    -- not_submitted when the upload or the creation was refused.
    status          text        NOT NULL,
    lines           integer     NOT NULL,
    -- The batch price of its lines before submission (half the list price, §11).
    estimated_usd   float8      NOT NULL,
    request_counts  jsonb,
    output_file_id  text,
    error_file_id   text,
    -- Why OpenAI failed the batch as a whole, or why it was never submitted.
    errors          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    polled_at       timestamptz,
    finished_at     timestamptz,
    -- The final report (JSON), once finished.
    report          jsonb
);
CREATE INDEX IF NOT EXISTS memoji_warm_batches_open
    ON memoji_warm_batches (created_at) WHERE finished_at IS NULL;

-- One row per line of a batch: the custom_id OpenAI answers under, the key and configuration it
-- stands for, and, once its answer is handled, what came of it.
CREATE TABLE IF NOT EXISTS memoji_warm_batch_items (
    batch_id         uuid    NOT NULL REFERENCES memoji_warm_batches (id) ON DELETE CASCADE,
    custom_id        text    NOT NULL,
    -- Its place in the input file (1, 2, …).
    line_no          integer NOT NULL,
    prompt_hash      text    NOT NULL,
    -- The canonical configuration (as recorded in memoji_cache.prompt_config).
    prompt_config    jsonb   NOT NULL,
    origin           text    NOT NULL,
    -- The generation lease holder used while its image is stored and recorded.
    holder           uuid    NOT NULL,
    estimate_usd     float8  NOT NULL,
    -- For a model refresh: the image the entry served when the batch was submitted.
    old_image_url    text,
    old_storage_path text,
    -- NULL while pending; generated | wasted | failed.
    outcome          text,
    cost_usd         float8,
    message          text,
    PRIMARY KEY (batch_id, custom_id)
);

-- Every warming run that did something (live or batch, by hand or scheduled, refreshes too):
-- the dashboard's warming history. Small: one row per run.
CREATE TABLE IF NOT EXISTS memoji_warm_runs (
    id          bigserial   PRIMARY KEY,
    source      text        NOT NULL,
    -- live | batch
    mode        text        NOT NULL,
    generated   integer     NOT NULL DEFAULT 0,
    skipped     integer     NOT NULL DEFAULT 0,
    failed      integer     NOT NULL DEFAULT 0,
    -- Generated, but the key was recorded by someone else first (paid, dropped).
    wasted      integer     NOT NULL DEFAULT 0,
    spent_usd   float8      NOT NULL DEFAULT 0,
    wasted_usd  float8      NOT NULL DEFAULT 0,
    batch_id    uuid,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS memoji_warm_runs_finished ON memoji_warm_runs (finished_at DESC);

-- Warmed entries only: what warming has been worth (entries, uses, cost) read without a scan of
-- memoji_cache.
CREATE INDEX IF NOT EXISTS memoji_cache_warmed
    ON memoji_cache (prompt_hash) INCLUDE (usage_count, generation_cost)
    WHERE warmed_at IS NOT NULL;
