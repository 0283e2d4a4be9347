"""Imaging cores of tele-expertise (issue 5): pure functions, run in a process pool.

* :mod:`relay.imaging.sanitize` — uploaded photo (JPEG, PNG, HEIC) to an upright,
  metadata-free baseline JPEG and a thumbnail: :func:`~relay.imaging.sanitize.sanitize_photo`.
* :mod:`relay.imaging.dicom_in` — uploaded DICOM object to a minimal summary and a preview:
  :func:`~relay.imaging.dicom_in.read_dicom`.
* :mod:`relay.imaging.jpeg` — JPEG marker walk (proofs of what a JPEG carries).
* :mod:`relay.imaging.workers` — the process pool they run in.
* :mod:`relay.imaging.errors` — their errors, each with its HTTP answer.

The DICOM export and the PACS client are :mod:`relay.dicom_export` and :mod:`relay.pacs`.
"""
