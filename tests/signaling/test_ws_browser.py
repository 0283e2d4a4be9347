"""Two headless Chromium pages hold a teleconsultation through the real page and relay.

The physician (signed in) and the patient (join link with the token in the fragment) each
pass the device check with Chromium's fake camera and microphone; the patient waits, the
physician admits them, and both receive the other's video (``getStats`` inbound-rtp bytes
growing). Host candidates on this machine only, no TURN.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.harness.accounts import PASSWORD, PHYSICIAN
from tests.harness.relay_process import RelayProcess

pytestmark = pytest.mark.browser


def _inbound(page: Any) -> dict[str, int]:
    totals: dict[str, int] = page.evaluate("window.relaisConsultation.inboundVideoBytes()")
    return totals


def _wait_for_growing_video(page: Any, timeout: float = 20.0) -> int:
    """Remote video bytes from one peer, checked to keep growing."""
    deadline = time.monotonic() + timeout
    first = 0
    while time.monotonic() < deadline:
        values = list(_inbound(page).values())
        if values and values[0] > 0:
            first = values[0]
            break
        time.sleep(0.2)
    assert first > 0, "no remote video received"
    time.sleep(1.0)
    later = next(iter(_inbound(page).values()))
    assert later > first, (first, later)
    return later


def test_physician_admits_patient_and_both_see_video(browser: Any, relay: RelayProcess) -> None:
    doctor_context = browser.new_context(ignore_https_errors=True, locale="fr-FR")
    patient_context = browser.new_context(ignore_https_errors=True, locale="fr-FR")
    try:
        login = doctor_context.request.post(
            f"{relay.url}/api/login", data={"email": PHYSICIAN.email, "password": PASSWORD}
        )
        assert login.status == 200
        scheduled = doctor_context.request.post(
            f"{relay.url}/api/consultations",
            data={
                "scheduled_at": datetime.now(UTC).isoformat(),
                "duration_minutes": 20,
                "participants": [{"role": "patient", "display_name": "Mme Léa Moreau"}],
            },
        )
        assert scheduled.status == 201, scheduled.text()
        consultation = scheduled.json()
        link = consultation["participants"][1]["link"]["url"]

        doctor = doctor_context.new_page()
        doctor.goto(f"{relay.url}/consultation/{consultation['id']}")
        doctor.wait_for_selector("#check-step:not([hidden]) #join:not([disabled])")
        assert "Caméra et micro détectés" in doctor.inner_text("#device-status")
        doctor.click("#join")
        doctor.wait_for_selector("#call-step:not([hidden])")

        patient = patient_context.new_page()
        patient.goto(link)
        patient.wait_for_selector("#check-step:not([hidden]) #join:not([disabled])")
        assert "#t=" not in patient.url  # the token left the address bar
        assert patient.inner_text("#who") == "Mme Léa Moreau"
        patient.click("#join")
        patient.wait_for_selector("#waiting-step:not([hidden])")
        assert "Salle d'attente" in patient.inner_text("#waiting-step h1")

        doctor.wait_for_selector("#waiting-list li:has-text('Mme Léa Moreau') button.admit")
        doctor.click("#waiting-list button.admit")
        patient.wait_for_selector("#call-step:not([hidden])")
        doctor.wait_for_selector("#tiles .tile.remote")
        patient.wait_for_selector("#tiles .tile.remote")

        _wait_for_growing_video(doctor)
        _wait_for_growing_video(patient)

        patient.fill("#chat-input", "Bonjour docteur")
        patient.click("#chat-form button")
        doctor.wait_for_selector("#chat-log li:has-text('Bonjour docteur')")

        # Recording: asked by the physician, accepted by both, sent to the relay's recorder.
        doctor.click("#record")
        for page in (doctor, patient):
            page.wait_for_selector("#recording-consent:not([hidden])")
            page.click("#recording-yes")
        for page in (doctor, patient):
            page.wait_for_selector("#recording-state:has-text('Enregistrement en cours')")
            page.wait_for_function(
                "() => window.relaisConsultation.recorderState() === 'connected'", timeout=20_000
            )
        time.sleep(2.0)
        patient.click("#recording-withdraw")  # stops it for everyone; what was taken is kept
        doctor.wait_for_selector("#recording-state:not(:has-text('Enregistrement en cours'))")
        assert doctor.evaluate("window.relaisConsultation.recorderState()") is None
        deadline = time.monotonic() + 20
        while doctor.locator("#recordings-list a:has-text('Télécharger')").count() < 2:
            assert time.monotonic() < deadline, doctor.inner_text("#recordings-list")
            doctor.click("#recordings-show")
            time.sleep(0.5)
        assert patient.locator("#recordings-panel").is_hidden()

        patient.click("#leave")
        patient.wait_for_selector("#end-step:not([hidden])")
        doctor.wait_for_function("() => !document.querySelector('#tiles .tile.remote')")
    finally:
        doctor_context.close()
        patient_context.close()
