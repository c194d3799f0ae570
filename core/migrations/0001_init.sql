-- The catalog: uploads and their parts, documents, their versions, dead letters.
-- Only what is needed to resume, complete, index or clean up; never payload bytes.

CREATE TABLE IF NOT EXISTS uploads (
    upload_id       uuid PRIMARY KEY,
    tenant          text        NOT NULL,
    path            text        NOT NULL,
    object_key      text        NOT NULL,
    s3_upload_id    text,
    size            bigint      NOT NULL CHECK (size >= 0),
    sha256          text,
    content_type    text        NOT NULL DEFAULT '',
    part_size       bigint      NOT NULL CHECK (part_size > 0),
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'completing', 'completed', 'failed', 'aborted', 'expired')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_status_expires ON uploads (status, expires_at);

CREATE TABLE IF NOT EXISTS upload_parts (
    upload_id       uuid        NOT NULL REFERENCES uploads (upload_id) ON DELETE CASCADE,
    part_number     integer     NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    size            bigint      NOT NULL CHECK (size >= 0),
    md5             text        NOT NULL,
    etag            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, part_number)
);

CREATE TABLE IF NOT EXISTS documents (
    document_id     uuid PRIMARY KEY,
    tenant          text        NOT NULL,
    path            text        NOT NULL,
    latest_version  integer     NOT NULL DEFAULT 0,
    deleted         boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, path)
);

CREATE TABLE IF NOT EXISTS document_versions (
    document_id     uuid        NOT NULL REFERENCES documents (document_id) ON DELETE CASCADE,
    version         integer     NOT NULL CHECK (version >= 1),
    object_key      text        NOT NULL,
    sha256          text        NOT NULL,
    size            bigint      NOT NULL CHECK (size >= 0),
    content_type    text        NOT NULL DEFAULT '',
    etag            text        NOT NULL DEFAULT '',
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'indexing', 'indexed', 'failed', 'superseded')),
    chunk_count     integer,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    indexed_at      timestamptz,
    PRIMARY KEY (document_id, version)
);
CREATE INDEX IF NOT EXISTS document_versions_status ON document_versions (status);

CREATE TABLE IF NOT EXISTS dead_letters (
    id              bigserial PRIMARY KEY,
    document_id     uuid        NOT NULL,
    version         integer     NOT NULL,
    stage           text        NOT NULL,
    reason          text        NOT NULL,
    detail          text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,
    FOREIGN KEY (document_id, version) REFERENCES document_versions (document_id, version) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS dead_letters_version ON dead_letters (document_id, version);
