-- The refund sweep (src/maintenance/refund.rs) reads recent charges by time. Ledger rows are
-- written once and updated once (refunded_at, not indexed), so the index costs one entry per
-- charge and keeps refunds HOT.
CREATE INDEX IF NOT EXISTS memoji_credit_ledger_charged_at_idx ON memoji_credit_ledger (charged_at);

-- Job ids derived from message bodies (no job_id, no UUID message_id; CONTRACT.md §2.1): the job
-- a body stands for right now. The first job of a body has the id derived from it (as before this
-- table); once that job has been finished for worker.derived_id_ttl_secs, or failed retryably, the
-- same body is a new job with an id of its own, and this row points at it. A redelivery of the
-- same message finds its job here. One small row per distinct body.
CREATE TABLE memoji_derived_jobs (
    derived_id  uuid PRIMARY KEY,
    job_id      uuid NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now()
);
