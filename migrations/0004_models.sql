-- CONTRACT.md §11: which model made each image, and what OpenAI reported it used.
-- `model` is the model that was called (a retired model's successor, or `placeholder`); rows the
-- JavaScript system wrote keep NULL, and their results say `"model": null`. `usage` is the
-- response's token usage as OpenAI reported it (NULL where it reported none).
ALTER TABLE memoji_cache
    ADD COLUMN IF NOT EXISTS model text,
    ADD COLUMN IF NOT EXISTS usage jsonb;

-- Rows this worker wrote before successors existed were made by the model they asked for.
UPDATE memoji_cache
   SET model = CASE generator WHEN 'placeholder' THEN 'placeholder'
                              ELSE prompt_config->>'model' END
 WHERE model IS NULL AND generator IS NOT NULL;

-- What the last lifecycle check learnt of each model the worker may call (GET /v1/models/{id}),
-- so that `memoji-worker stats` can show it without asking OpenAI itself.
CREATE TABLE IF NOT EXISTS memoji_model_status (
    model         text PRIMARY KEY,
    -- 'ok' (OpenAI serves it), 'unknown' (OpenAI answered 404)
    state         text NOT NULL,
    shutdown_date date,
    checked_at    timestamptz NOT NULL DEFAULT now()
);
