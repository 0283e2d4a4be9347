-- Teleconsultations: schedule, participants with their roles, join-link versions.
-- Portable SQL: TEXT ids (random, unguessable), ISO-8601 UTC timestamps as TEXT.
-- No patient identity in clear: a consultation is tied to a patient by a keyed hash of the
-- INS (the same reference the audit log uses), never by the INS itself.

CREATE TABLE consultations (
    id TEXT PRIMARY KEY,
    organizer_id TEXT NOT NULL REFERENCES professionals (id),
    scheduled_at TEXT NOT NULL,
    duration_minutes INTEGER NOT NULL CHECK (duration_minutes BETWEEN 5 AND 240),
    status TEXT NOT NULL DEFAULT 'scheduled' CHECK (status IN ('scheduled', 'ended')),
    patient_ref TEXT,
    case_id TEXT,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    CHECK ((status = 'ended') = (ended_at IS NOT NULL))
);
CREATE INDEX consultations_by_organizer ON consultations (organizer_id, scheduled_at);

-- Professionals take part through their account (professional_id set); patients, guests and
-- lay interpreters through a join link. A link is valid while link_active = 1 and the token's
-- version equals link_version: re-issuing bumps the version, revoking clears link_active.
CREATE TABLE consultation_participants (
    id TEXT PRIMARY KEY,
    consultation_id TEXT NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (
        role IN ('physician', 'nurse', 'patient', 'specialist', 'interpreter', 'guest')
    ),
    display_name TEXT NOT NULL,
    professional_id TEXT REFERENCES professionals (id),
    link_version INTEGER NOT NULL DEFAULT 0,
    link_active INTEGER NOT NULL DEFAULT 0 CHECK (link_active IN (0, 1)),
    birth_date_hash TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (consultation_id, professional_id),
    CHECK (professional_id IS NULL OR (link_active = 0 AND birth_date_hash IS NULL)),
    CHECK (professional_id IS NOT NULL OR role IN ('patient', 'interpreter', 'guest'))
);
CREATE INDEX consultation_participants_by_consultation
    ON consultation_participants (consultation_id);
CREATE INDEX consultation_participants_by_professional
    ON consultation_participants (professional_id);
