-- Direct uploads (README, "Uploads"): the client sends the parts straight to S3 through presigned URLs.
--   uploads.transfer      'proxy' (parts through the Serve app, as before) or 'direct' (presigned part URLs).
--   upload_part_digests   the MD5 the client declared for each part when it asked for the part's URL; completion
--                         checks that S3 holds every part with exactly that MD5 (its ETag) before joining them.
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS transfer text NOT NULL DEFAULT 'proxy'
    CHECK (transfer IN ('proxy', 'direct'));

CREATE TABLE IF NOT EXISTS upload_part_digests (
    upload_id   uuid    NOT NULL REFERENCES uploads (upload_id) ON DELETE CASCADE,
    part_number integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    md5         text    NOT NULL,
    signed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, part_number)
);
