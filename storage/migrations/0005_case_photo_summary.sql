-- DICOM uploads: the non-identifying summary shown next to the preview (modality, body part,
-- size...), stored as an encrypted blob like every clinical content.
ALTER TABLE case_photos ADD COLUMN summary_blob_id TEXT;
