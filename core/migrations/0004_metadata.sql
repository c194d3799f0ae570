-- Document metadata (issue 15; README, "Document metadata").
--   document_versions.metadata    the user's fields of the version (core.metadata: at most 64 keys, 8 KiB); a new
--                                 version without metadata of its own takes its predecessor's.
--   document_versions.properties  what the file says of itself (a PDF's title, an image's size...), recorded when
--                                 the version is indexed.
--   uploads.metadata              metadata given when the upload was created (NULL: none given, inherit).
--   metadata_changes              every metadata a version was given, in order: at registration and by each PATCH.

ALTER TABLE document_versions ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE document_versions ADD COLUMN IF NOT EXISTS properties jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS metadata jsonb;

CREATE TABLE IF NOT EXISTS metadata_changes (
    id              bigserial PRIMARY KEY,
    document_id     uuid        NOT NULL,
    version         integer     NOT NULL,
    metadata        jsonb       NOT NULL,
    source          text        NOT NULL CHECK (source IN ('upload', 'scan', 'inherited', 'patch')),
    changed_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (document_id, version) REFERENCES document_versions (document_id, version) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS metadata_changes_version ON metadata_changes (document_id, version, id);
