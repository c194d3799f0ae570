-- Versions, deletes and model records (issue 6).
--   documents.latest_version  now means the version search shows (0: none), advanced only when a version is
--                             committed (its points written and flagged is_latest) or restored.
--   documents.head_version    the newest content of the path: the version the next ingest indexes, and the one
--                             new bytes are compared with (a restore moves it back to the restored version).
--   documents.deleted_at      when the document was deleted (rows are kept; a re-upload makes a new version).
--   document_versions.written_count  points written for a version not committed yet (NULL otherwise): a run that
--                             died after writing every point is finished without embedding again.
--   index_models              the embedding model each collection's named vector was built with.

ALTER TABLE documents ADD COLUMN IF NOT EXISTS head_version integer NOT NULL DEFAULT 0;
ALTER TABLE documents ADD COLUMN IF NOT EXISTS deleted_at timestamptz;
ALTER TABLE document_versions ADD COLUMN IF NOT EXISTS written_count integer;

-- Existing rows: the head is the newest version; the shown version is the newest indexed one.
UPDATE documents d SET head_version = coalesce(
    (SELECT max(v.version) FROM document_versions v WHERE v.document_id = d.document_id), 0)
WHERE head_version = 0;
UPDATE documents d SET latest_version = coalesce(
    (SELECT max(v.version) FROM document_versions v WHERE v.document_id = d.document_id AND v.status = 'indexed'), 0)
WHERE NOT deleted;

CREATE INDEX IF NOT EXISTS documents_tenant_path ON documents (tenant, path);
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (created_at) WHERE replayed_at IS NULL;

CREATE TABLE IF NOT EXISTS index_models (
    collection      text        NOT NULL,
    vector          text        NOT NULL,
    model           text        NOT NULL,
    dimension       integer     NOT NULL CHECK (dimension > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, vector)
);
