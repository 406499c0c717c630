-- Variants (`cache.variants` = N > 1): a key holds up to N images. Variant 0 is the key's row in
-- memoji_cache, untouched and exactly as the seed's JavaScript system writes it; variants 1..N-1
-- live here, where that system never looks. Columns mirror memoji_cache's, so a variant is served
-- and counted the same way.
--
-- No foreign key to memoji_cache: a user whose variant is 2 may be the first to ask for a key,
-- and gets their own image at once. The cleanup judges a key as one entry (its memoji_cache
-- row's age, all its images' uses together) and deletes its variants with that row, in the same
-- statement; variant rows
-- of a key without that row are judged by the same rules on their own (maintenance::cleanup).
CREATE TABLE memoji_cache_variants (
    prompt_hash     text        NOT NULL,
    variant         integer     NOT NULL CHECK (variant >= 1),
    image_url       text        NOT NULL,
    storage_path    text        NOT NULL,
    image_bytes     bigint      NOT NULL DEFAULT 0,
    generation_cost float8      NOT NULL DEFAULT 0,
    generator       text        NOT NULL,
    model           text,
    usage           jsonb,
    usage_count     integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    -- As memoji_cache's (migration 0010), so one column list serves both tables; warming makes
    -- variant 0 only, so it stays NULL here.
    warmed_at       timestamptz,
    PRIMARY KEY (prompt_hash, variant)
);

-- The cleanup's pass over variant rows whose key has no memoji_cache row, oldest first.
CREATE INDEX memoji_cache_variants_created_at ON memoji_cache_variants (created_at);

-- Single flight per (key, variant): variant 0 keeps the key's lease as it was (variant = 0).
-- `storage_path` is the `<hash>-<n>.png` path the holder reserved for the image it is making (a
-- variant's, or a replacement's), so two generations of one key never write the same object,
-- and a holder that takes the lease over reuses an image its predecessor stored but never
-- recorded.
ALTER TABLE memoji_generation_leases
    ADD COLUMN variant      integer NOT NULL DEFAULT 0,
    ADD COLUMN storage_path text;
ALTER TABLE memoji_generation_leases DROP CONSTRAINT memoji_generation_leases_pkey;
ALTER TABLE memoji_generation_leases ADD PRIMARY KEY (prompt_hash, variant);
