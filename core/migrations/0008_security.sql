-- Security (README, "Security").
--   api_keys      one row per API key: its tenant and role, and a keyed hash of its secret (never the secret).
--   auth_secret   the key of that hash when the operator sets no SLUICE_AUTH_SECRET (one row, made once).
--   audit_events  every mutating call and every refused one: who, what, on what, and how it ended.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text        PRIMARY KEY,
    tenant      text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    name        text        NOT NULL DEFAULT '',
    key_hash    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant);

CREATE TABLE IF NOT EXISTS auth_secret (
    id      integer PRIMARY KEY CHECK (id = 1),
    secret  bytea   NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_events (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    request_id  text        NOT NULL DEFAULT '',
    subject     text        NOT NULL DEFAULT '',
    tenant      text        NOT NULL DEFAULT '',
    role        text        NOT NULL DEFAULT '',
    action      text        NOT NULL,
    target      text        NOT NULL DEFAULT '',
    outcome     text        NOT NULL,
    status      integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_tenant_at ON audit_events (tenant, at);
