-- Every job the worker has seen, keyed by its idempotency key, with the result it ended in.
-- A redelivered or republished job finds its row here and is answered from it. While a job is
-- processing, one delivery owns it (owner, renewed while it works): a duplicate delivery waits for
-- the owner's result, or takes over once the owner has stopped renewing (it died).
CREATE TABLE memoji_jobs (
    job_id           uuid PRIMARY KEY,
    user_id          text NOT NULL,
    prompt_hash      text,
    status           text NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed')),
    result           jsonb,
    deliveries       integer NOT NULL DEFAULT 1,
    owner            uuid,
    owner_expires_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- No index beyond the key: every delivery updates its row (deliveries, owner, result), and with no
-- other index those updates stay HOT (no index writes) on the hit path.
ALTER TABLE memoji_jobs SET (fillfactor = 90);

-- Credits: one row per user and calendar month (UTC). allowance NULL means unlimited.
CREATE TABLE memoji_credit_balances (
    user_id    text NOT NULL,
    period     date NOT NULL,
    tier       text NOT NULL,
    allowance  integer,
    used       integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, period)
);

-- One row per charged job: the primary key makes charging idempotent per job id.
CREATE TABLE memoji_credit_ledger (
    job_id      uuid PRIMARY KEY,
    user_id     text NOT NULL,
    period      date NOT NULL,
    charged_at  timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz
);

-- Single flight: the job that may generate a key right now. A lease that is not renewed expires,
-- so another worker takes over when the holder dies.
CREATE TABLE memoji_generation_leases (
    prompt_hash text PRIMARY KEY,
    holder      uuid NOT NULL,
    expires_at  timestamptz NOT NULL
);
