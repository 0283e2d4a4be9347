-- Secure messaging: threads, participants, messages, attachments, read and delivery state,
-- the outbound mail queue, guest access for external recipients, S/MIME certificates.
-- Portable SQL: TEXT ids (random, unguessable), ISO-8601 UTC timestamps as TEXT.
-- No health data in clear: subjects, texts, patient identities and attachment names live in
-- encrypted blobs (content_blob_id); a thread about a patient is linked to them only by the
-- keyed hash of the INS (the audit log's patient reference).

CREATE TABLE threads (
    id TEXT PRIMARY KEY,
    content_blob_id TEXT NOT NULL,
    patient_ref TEXT,
    created_at TEXT NOT NULL,
    last_message_at TEXT NOT NULL
);
CREATE INDEX threads_by_activity ON threads (last_message_at);

-- Professionals and teams of the relay, or external e-mail addresses. `address` is the
-- address mail for this participant goes to (a professional's e-mail, a team's relay
-- address, an external address); it is what a reply token is bound to.
CREATE TABLE thread_participants (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('professional', 'team', 'external')),
    professional_id TEXT REFERENCES professionals (id),
    team_id TEXT REFERENCES teams (id),
    address TEXT NOT NULL,
    display_name TEXT NOT NULL,
    added_at TEXT NOT NULL,
    UNIQUE (thread_id, address),
    CHECK ((kind = 'professional') = (professional_id IS NOT NULL)),
    CHECK ((kind = 'team') = (team_id IS NOT NULL))
);
CREATE INDEX thread_participants_by_professional ON thread_participants (professional_id);
CREATE INDEX thread_participants_by_team ON thread_participants (team_id);
CREATE INDEX thread_participants_by_address ON thread_participants (address);

-- author_participant_id is NULL for the relay's own notices (delivery failures).
-- rfc822_id: the Message-ID of an inbound mail; a retried delivery to the same thread is
-- recognised by it and stored once.
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    author_participant_id TEXT REFERENCES thread_participants (id),
    author_professional_id TEXT REFERENCES professionals (id),
    source TEXT NOT NULL CHECK (source IN ('web', 'smtp', 'guest', 'system')),
    content_blob_id TEXT NOT NULL,
    raw_blob_id TEXT,
    rfc822_id TEXT,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (thread_id, rfc822_id)
);
CREATE INDEX messages_by_thread ON messages (thread_id, created_at);
CREATE INDEX messages_by_rfc822_id ON messages (rfc822_id);

CREATE TABLE message_attachments (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    blob_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX message_attachments_by_message ON message_attachments (message_id);

-- Read state per reader: a professional id, or an external participant id (guest view).
CREATE TABLE message_reads (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    reader_id TEXT NOT NULL,
    read_at TEXT NOT NULL,
    PRIMARY KEY (message_id, reader_id)
);
CREATE INDEX message_reads_by_reader ON message_reads (reader_id);

-- Delivery state of each message to each participant other than its author.
CREATE TABLE message_deliveries (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    participant_id TEXT NOT NULL REFERENCES thread_participants (id) ON DELETE CASCADE,
    channel TEXT NOT NULL CHECK (channel IN ('inbox', 'notification', 'smime')),
    state TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'failed')),
    reason TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (message_id, participant_id)
);

-- Message-IDs of mail the relay sent about a thread, so that a reply sent to a mailbox
-- address (not the reply address) with In-Reply-To/References still finds its thread.
CREATE TABLE thread_mail_ids (
    rfc822_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE
);

-- The durable outbound queue. One row per mail and recipient; the mail itself is an
-- encrypted blob. rfc822_id (the Message-ID) is unique: enqueuing twice sends once.
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    rfc822_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'smime', 'guest_code', 'mdn', 'dsn')),
    envelope_from TEXT NOT NULL,
    recipient TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    thread_id TEXT REFERENCES threads (id) ON DELETE SET NULL,
    message_id TEXT REFERENCES messages (id) ON DELETE SET NULL,
    participant_id TEXT REFERENCES thread_participants (id) ON DELETE SET NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);

-- Guest access of an external participant to one thread: a one-time code mailed to the
-- participant's address opens a session. Codes and session tokens are stored hashed.
CREATE TABLE guest_codes (
    participant_id TEXT PRIMARY KEY REFERENCES thread_participants (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    sent_at TEXT NOT NULL
);

CREATE TABLE guest_sessions (
    token_hash TEXT PRIMARY KEY,
    participant_id TEXT NOT NULL REFERENCES thread_participants (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX guest_sessions_by_participant ON guest_sessions (participant_id);

-- S/MIME certificates of recipients (by address): they receive the full message encrypted.
CREATE TABLE smime_certificates (
    address TEXT PRIMARY KEY,
    certificate_pem TEXT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    not_after TEXT NOT NULL,
    added_by TEXT REFERENCES professionals (id),
    added_at TEXT NOT NULL
);
