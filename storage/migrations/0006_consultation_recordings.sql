-- Server-side recordings of teleconsultations: one row per participant and per media
-- session (a participant who reconnects, or a recording that stops and starts again on a
-- consent change, gives several). The media is an encrypted blob (WebM: VP8 + Opus); SQL
-- keeps only ids, times and sizes.
CREATE TABLE consultation_recordings (
    id TEXT PRIMARY KEY,
    consultation_id TEXT NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    participant_id TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    media_type TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size > 0),
    sha256 TEXT NOT NULL,
    video_frames INTEGER NOT NULL CHECK (video_frames >= 0),
    audio_frames INTEGER NOT NULL CHECK (audio_frames >= 0),
    end_reason TEXT NOT NULL
);
CREATE INDEX consultation_recordings_by_consultation
    ON consultation_recordings (consultation_id, started_at);
