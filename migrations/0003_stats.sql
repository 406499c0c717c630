-- Statistics that answer in milliseconds however large memoji_cache grows (CONTRACT.md §8):
-- nothing here is computed by scanning the cache table on a request.

-- Job events per UTC hour, written by every worker process: each one counts in memory and adds
-- its counts here about once a second, one upsert per hour bucket. The triggers below add the
-- cache table's own changes (entries added, deleted, archived) to the same buckets.
CREATE TABLE memoji_stats_hourly (
    hour                timestamptz PRIMARY KEY,
    hits                bigint NOT NULL DEFAULT 0,
    misses              bigint NOT NULL DEFAULT 0,
    generations         bigint NOT NULL DEFAULT 0,
    failures            bigint NOT NULL DEFAULT 0,
    generation_cost_usd double precision NOT NULL DEFAULT 0,
    saved_usd           double precision NOT NULL DEFAULT 0,
    entries_added       bigint NOT NULL DEFAULT 0,
    entries_deleted     bigint NOT NULL DEFAULT 0,
    entries_archived    bigint NOT NULL DEFAULT 0
);

-- The same job events since the beginning, so lifetime figures read one row, not every hour.
CREATE TABLE memoji_stats_lifetime (
    id                  smallint PRIMARY KEY CHECK (id = 1),
    hits                bigint NOT NULL DEFAULT 0,
    misses              bigint NOT NULL DEFAULT 0,
    generations         bigint NOT NULL DEFAULT 0,
    failures            bigint NOT NULL DEFAULT 0,
    generation_cost_usd double precision NOT NULL DEFAULT 0,
    saved_usd           double precision NOT NULL DEFAULT 0
);
INSERT INTO memoji_stats_lifetime (id) VALUES (1);

-- What memoji_cache holds (rows, sum of usage_count, archived rows), kept by the triggers below
-- whoever inserts or deletes: the worker, the cleanup, an import from the JavaScript system.
-- Hits are the exception (see the update trigger). Sharded by the writing backend so that
-- concurrent writers do not queue on one row; the figures are the sums over the shards.
CREATE TABLE memoji_cache_totals (
    shard    smallint PRIMARY KEY,
    entries  bigint NOT NULL DEFAULT 0,
    usage    bigint NOT NULL DEFAULT 0,
    archived bigint NOT NULL DEFAULT 0
);
INSERT INTO memoji_cache_totals (shard) SELECT generate_series(0, 15);

-- The one full scan: what the table holds when this migration runs (imported rows included).
UPDATE memoji_cache_totals totals
   SET entries = now_held.entries, usage = now_held.usage, archived = now_held.archived
  FROM (SELECT count(*) AS entries,
               COALESCE(sum(COALESCE(usage_count, 0)), 0) AS usage,
               count(*) FILTER (WHERE archived IS TRUE) AS archived
          FROM memoji_cache) now_held
 WHERE totals.shard = 0;

-- Adds a statement's changes. Zero changes write nothing, so most statements cost one comparison.
CREATE FUNCTION memoji_stats_apply(d_entries bigint, d_usage bigint, d_archived bigint,
                                   added bigint, deleted bigint, newly_archived bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF d_entries <> 0 OR d_usage <> 0 OR d_archived <> 0 THEN
        UPDATE memoji_cache_totals
           SET entries = entries + d_entries, usage = usage + d_usage, archived = archived + d_archived
         WHERE shard = pg_backend_pid() % 16;
    END IF;
    -- Rare events (generations, cleanups, imports), so one row per hour is no contention point.
    IF added <> 0 OR deleted <> 0 OR newly_archived <> 0 THEN
        INSERT INTO memoji_stats_hourly AS h (hour, entries_added, entries_deleted, entries_archived)
        VALUES (date_trunc('hour', now()), added, deleted, newly_archived)
        ON CONFLICT (hour) DO UPDATE
           SET entries_added = h.entries_added + EXCLUDED.entries_added,
               entries_deleted = h.entries_deleted + EXCLUDED.entries_deleted,
               entries_archived = h.entries_archived + EXCLUDED.entries_archived;
    END IF;
END $$;

-- Inserts and deletes: statement-level triggers with transition tables, one call per statement,
-- not per row, so a batch of a thousand deletions or a bulk import costs one update of the totals.
CREATE FUNCTION memoji_cache_counted_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM memoji_stats_apply(n, u, a, n, 0, 0)
       FROM (SELECT count(*) AS n, COALESCE(sum(COALESCE(usage_count, 0)), 0) AS u,
                    count(*) FILTER (WHERE archived IS TRUE) AS a
               FROM inserted) d;
    RETURN NULL;
END $$;

CREATE FUNCTION memoji_cache_counted_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM memoji_stats_apply(-n, -u, -a, 0, n, 0)
       FROM (SELECT count(*) AS n, COALESCE(sum(COALESCE(usage_count, 0)), 0) AS u,
                    count(*) FILTER (WHERE archived IS TRUE) AS a
               FROM deleted) d;
    RETURN NULL;
END $$;

-- Updates are counted row by row, and only those that change what a hit never changes: a
-- regeneration (cache::record sets updated_at) or archiving. A hit (usage_count + 1,
-- last_used_at) fails the trigger's WHEN and costs nothing here; the workers count hits in
-- memory and add them to memoji_stats_lifetime instead (see src/stats), so total_usage =
-- memoji_cache_totals.usage + memoji_stats_lifetime.hits.
CREATE FUNCTION memoji_cache_counted_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM memoji_stats_apply(
        0,
        COALESCE(NEW.usage_count, 0)::bigint - COALESCE(OLD.usage_count, 0),
        (NEW.archived IS TRUE)::int - (OLD.archived IS TRUE)::int,
        0, 0,
        CASE WHEN NEW.archived IS TRUE AND OLD.archived IS NOT TRUE THEN 1 ELSE 0 END);
    RETURN NULL;
END $$;

CREATE FUNCTION memoji_cache_counted_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE memoji_cache_totals SET entries = 0, usage = 0, archived = 0;
    RETURN NULL;
END $$;

CREATE TRIGGER memoji_cache_counted_insert AFTER INSERT ON memoji_cache
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION memoji_cache_counted_insert();
CREATE TRIGGER memoji_cache_counted_delete AFTER DELETE ON memoji_cache
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION memoji_cache_counted_delete();
CREATE TRIGGER memoji_cache_counted_update AFTER UPDATE ON memoji_cache
    FOR EACH ROW
    WHEN (OLD.updated_at IS DISTINCT FROM NEW.updated_at OR OLD.archived IS DISTINCT FROM NEW.archived)
    EXECUTE FUNCTION memoji_cache_counted_update();
CREATE TRIGGER memoji_cache_counted_truncate AFTER TRUNCATE ON memoji_cache
    FOR EACH STATEMENT EXECUTE FUNCTION memoji_cache_counted_truncate();

-- Cleanup walks old, non-archived entries in (created_at, id) order, a batch at a time.
CREATE INDEX memoji_cache_cleanup_order_idx
    ON memoji_cache (created_at, id) WHERE archived IS NOT TRUE;
-- The index above serves everything the old one did.
DROP INDEX IF EXISTS memoji_cache_cleanup_idx;
