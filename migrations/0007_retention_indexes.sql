-- Retention (CONTRACT.md §7): the cleanup prunes finished jobs older than
-- cleanup.job_retention_days and credit-ledger rows older than cleanup.ledger_retention_days, in
-- batches, oldest first. These indexes let each batch find its rows without scanning the table.
--
-- Both columns are written once, at insert, and never updated, so the updates a job's row gets on
-- every delivery (deliveries, owner, status, result) stay HOT: the index costs an insert one more
-- index entry, and an update nothing.
--
-- Building an index blocks writes to its table while it runs (seconds for millions of rows). On a
-- large existing table, create them beforehand without blocking, and this migration skips them:
--   CREATE INDEX CONCURRENTLY memoji_jobs_created_at ON memoji_jobs (created_at);
--   CREATE INDEX CONCURRENTLY memoji_credit_ledger_charged_at ON memoji_credit_ledger (charged_at);
CREATE INDEX IF NOT EXISTS memoji_jobs_created_at ON memoji_jobs (created_at);
CREATE INDEX IF NOT EXISTS memoji_credit_ledger_charged_at ON memoji_credit_ledger (charged_at);
