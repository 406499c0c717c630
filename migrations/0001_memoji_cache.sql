-- The cache table of the JavaScript/Supabase system, column for column, so its rows import as they
-- are (CONTRACT.md §4). IF NOT EXISTS: a database that already holds the table keeps it.
CREATE TABLE IF NOT EXISTS memoji_cache (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    prompt_hash     text NOT NULL UNIQUE,
    image_url       text NOT NULL,
    prompt_config   jsonb NOT NULL DEFAULT '{}'::jsonb,
    generation_cost numeric(10, 4) DEFAULT 0,
    usage_count     integer DEFAULT 1,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now(),
    last_used_at    timestamptz DEFAULT now(),
    archived        boolean DEFAULT false
);

-- What the worker adds: where the image is stored, how big it is, and which generator made it.
-- Imported rows keep NULLs here; the worker copes.
ALTER TABLE memoji_cache
    ADD COLUMN IF NOT EXISTS storage_path text,
    ADD COLUMN IF NOT EXISTS image_bytes  bigint,
    ADD COLUMN IF NOT EXISTS generator    text;

-- Cleanup scans by age and use among non-archived rows.
CREATE INDEX IF NOT EXISTS memoji_cache_cleanup_idx
    ON memoji_cache (created_at) WHERE archived IS NOT TRUE;
