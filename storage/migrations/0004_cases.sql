-- Tele-expertise cases (issue 5), their history, photos, billing acts, resumable uploads.
-- No clinical content here: the request (patient identity, question, wound details) and
-- the answers live in encrypted blobs; SQL keeps ids, states, dates, routing and a keyed
-- hash of the patient identifier (for counting and matching only).

CREATE TABLE cases (
    id TEXT PRIMARY KEY,
    requester_id TEXT NOT NULL REFERENCES professionals (id),
    requester_role TEXT NOT NULL,
    shared_team_id TEXT,  -- the requester's team the case is shared with (its nurses see it)
    created_at TEXT NOT NULL,
    state TEXT NOT NULL,
    state_since TEXT NOT NULL,
    urgency TEXT NOT NULL,
    patient_key TEXT,
    specialist_id TEXT,
    team_id TEXT,
    assignee_id TEXT,
    escalated INTEGER NOT NULL DEFAULT 0,
    window_start TEXT,
    due_at TEXT,
    reminders_sent INTEGER NOT NULL DEFAULT 0,
    first_answered_at TEXT,
    request_blob_id TEXT NOT NULL,
    next_wakeup TEXT,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX cases_by_requester ON cases (requester_id);
CREATE INDEX cases_by_shared_team ON cases (shared_team_id);
CREATE INDEX cases_by_team ON cases (team_id, state);
CREATE INDEX cases_by_specialist ON cases (specialist_id, state);
CREATE INDEX cases_by_wakeup ON cases (next_wakeup);

CREATE TABLE case_history (
    case_id TEXT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    PRIMARY KEY (case_id, seq)
);

-- Texts exchanged on a case (answer, questions, follow-ups): the text is a blob.
CREATE TABLE case_messages (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    author_id TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX case_messages_by_case ON case_messages (case_id, created_at);

CREATE TABLE case_photos (
    id TEXT PRIMARY KEY,
    case_id TEXT REFERENCES cases (id) ON DELETE CASCADE,  -- NULL until attached
    owner_id TEXT NOT NULL REFERENCES professionals (id),
    jpeg_blob_id TEXT NOT NULL,
    thumbnail_blob_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    source_format TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX case_photos_by_case ON case_photos (case_id);

CREATE TABLE billing_acts (
    case_id TEXT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    code TEXT NOT NULL,
    professional_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    performed_at TEXT NOT NULL,
    PRIMARY KEY (case_id, code, professional_id)
);
CREATE INDEX billing_acts_by_patient ON billing_acts (professional_id, patient_key);

-- A retried create with the same key returns the first case (issue 5: weak 4G links).
CREATE TABLE case_idempotency_keys (
    owner_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    case_id TEXT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (owner_id, idem_key)
);

-- Resumable uploads: each acknowledged chunk is its own encrypted, fsynced blob.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES professionals (id),
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    offset_bytes INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    photo_id TEXT,
    kind TEXT
);

CREATE TABLE upload_chunks (
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    offset_bytes INTEGER NOT NULL,
    length INTEGER NOT NULL,
    blob_id TEXT NOT NULL,
    PRIMARY KEY (upload_id, offset_bytes)
);
