-- Documents that kill their worker (README, "What you can rely on").
--   document_attempts  one row per (version, stage) a stage worker has started on and not finished: ``attempts``
--                      counts the starts not yet matched by a finish, so a row left behind after a worker died is
--                      evidence against that document. Kept out of the worker's memory because the worker is what
--                      dies; cleared by the ingest driver once the version's outcome is recorded.
CREATE TABLE IF NOT EXISTS document_attempts (
    document_id uuid NOT NULL,
    version integer NOT NULL,
    stage text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    worker text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, version, stage),
    FOREIGN KEY (document_id, version) REFERENCES document_versions (document_id, version) ON DELETE CASCADE
);
