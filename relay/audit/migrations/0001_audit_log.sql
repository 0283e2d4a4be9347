-- Audit log, in its own database file DATA_DIR/audit/audit.db (CNIL: keep traces apart from
-- the data they describe). Searchable columns hold identifiers and keyed hashes only; the
-- event itself is the RFC 8785 canonical FHIR AuditEvent in `content`.

-- One row per log entry; `idx` is the RFC 6962 leaf index (0-based, contiguous).
-- Retention erases salt, content and the identifying columns, and keeps commitment and
-- leaf_hash so the Merkle tree and every proof still verify (issue 3 item 5).
CREATE TABLE audit_entries (
    idx         INTEGER PRIMARY KEY,
    recorded_at TEXT    NOT NULL,           -- UTC, fixed-width ISO 8601: sorts as text
    action      TEXT    NOT NULL,           -- relay.audit.events.AuditAction value
    outcome     TEXT    NOT NULL,           -- FHIR audit-event-outcome code
    actor       TEXT,                       -- account / guest / node id (NULL once erased)
    patient     TEXT,                       -- HMAC patient reference (NULL once erased)
    retention   TEXT    NOT NULL CHECK (retention IN ('access', 'security')),
    salt        BLOB,                       -- 32 random bytes (NULL once erased)
    content     BLOB,                       -- canonical AuditEvent (NULL once erased)
    commitment  BLOB    NOT NULL,           -- SHA-256(salt || content)
    leaf_hash   BLOB    NOT NULL,           -- SHA-256(0x00 || commitment), tree level 0
    erased_at   TEXT
);
CREATE INDEX audit_entries_actor ON audit_entries (actor, idx);
CREATE INDEX audit_entries_patient ON audit_entries (patient, idx);
CREATE INDEX audit_entries_recorded_at ON audit_entries (recorded_at);

-- Resources an entry is about (entity ids), for "search by resource". Deleted on erasure.
CREATE TABLE audit_entry_resources (
    resource_id TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    PRIMARY KEY (resource_id, idx, kind)
) WITHOUT ROWID;
CREATE INDEX audit_entry_resources_idx ON audit_entry_resources (idx);

-- Complete-subtree hashes above the leaves: node (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level). Level 0 is audit_entries.leaf_hash.
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed C2SP checkpoints, one per tree size.
CREATE TABLE audit_checkpoints (
    size      INTEGER PRIMARY KEY,
    note      TEXT NOT NULL,
    signed_at TEXT NOT NULL
);

-- Durable per-consumer positions (e.g. the syslog forwarder): last index handed over.
CREATE TABLE audit_cursors (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);

-- Facts about the log itself (its origin line).
CREATE TABLE audit_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
