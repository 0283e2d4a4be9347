-- Professionals, teams, sessions and client certificates.
-- Portable SQL: TEXT ids (random, unguessable), ISO-8601 UTC timestamps as TEXT.

CREATE TABLE professionals (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('nurse', 'physician', 'specialist', 'coordinator', 'admin')),
    specialty TEXT,
    rpps TEXT UNIQUE,
    password_hash TEXT,
    totp_secret TEXT,
    totp_enabled INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    CHECK (role <> 'specialist' OR specialty IS NOT NULL)
);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('msp', 'cpts', 'service', 'specialty_pool')),
    specialty TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    professional_id TEXT NOT NULL REFERENCES professionals (id) ON DELETE CASCADE,
    added_at TEXT NOT NULL,
    PRIMARY KEY (team_id, professional_id)
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    professional_id TEXT NOT NULL REFERENCES professionals (id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
CREATE INDEX sessions_by_professional ON sessions (professional_id);

CREATE TABLE client_certificates (
    serial TEXT PRIMARY KEY,
    professional_id TEXT NOT NULL REFERENCES professionals (id) ON DELETE CASCADE,
    fingerprint_sha256 TEXT NOT NULL UNIQUE,
    not_after TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    blob_id TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL REFERENCES professionals (id),
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX files_by_owner ON files (owner_id);
