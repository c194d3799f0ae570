-- Uploads (issue 3): what completing, retrying and cleaning up need beyond 0001's columns.
--   s3_key       where the S3 multipart upload lives: a staging key outside every tenant's prefix; the verified
--                object is copied to object_key (<tenant>/<path>) only after its SHA-256 was checked.
--   on_conflict  'new_version' or 'reject', as asked at creation (checked again at completion).
--   progress     steps of a completion already done (sha256 and size of the stored bytes, final ETag, copied), so
--                that a retried completion resumes instead of redoing or guessing.
--   result       the first answer to POST .../complete ({"status_code", "body"}), returned to every later call.

ALTER TABLE uploads ADD COLUMN IF NOT EXISTS s3_key text;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS on_conflict text NOT NULL DEFAULT 'new_version'
    CHECK (on_conflict IN ('new_version', 'reject'));
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS progress jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS result jsonb;
CREATE INDEX IF NOT EXISTS uploads_tenant_created ON uploads (tenant, created_at);
CREATE INDEX IF NOT EXISTS uploads_s3_upload_id ON uploads (s3_upload_id);
