-- Ingest runs that coordinate (issue 11; README, "Ingest runs at once").
--   document_versions.claimed_by   the run that claimed the version for indexing (kept after it commits: who
--                                  indexed it last).
--   document_versions.lease_until  until when that run's claim holds; the run renews it while it works. Another
--                                  run takes an ``indexing`` version over only once its lease has expired (or it
--                                  has none: claimed before leases existed).

ALTER TABLE document_versions ADD COLUMN IF NOT EXISTS claimed_by text;
ALTER TABLE document_versions ADD COLUMN IF NOT EXISTS lease_until timestamptz;
-- Renewing and checking a run's claims reads the versions it holds, not the whole table.
CREATE INDEX IF NOT EXISTS document_versions_claimed ON document_versions (claimed_by) WHERE status = 'indexing';
