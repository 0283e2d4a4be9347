-- Small encrypted documents kept in SQL rather than as blob files: a message's content (text,
-- attachment names, small attachments). Each row holds exactly the bytes a blob file would
-- (same header, per-document data key wrapped by the master key, AES-256-GCM chunks), written
-- in the same transaction as the message that names it: one commit instead of a file, two
-- fsyncs and a commit. `relais keys rotate` re-wraps them as it does blob files.
CREATE TABLE sealed_documents (
    id TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
);
