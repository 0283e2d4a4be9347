"""A nurse on a phone creates a case with a photo; the page shows it sent; the specialist
takes it from the queue page and answers; the nurse sees the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness.accounts import NURSE, PASSWORD, SPECIALIST
from tests.harness.relay_process import RelayProcess
from tests.relay.cases.helpers import NIR
from tests.relay.imaging.images import phone_jpeg

pytestmark = pytest.mark.browser


def _login(browser: Any, relay: RelayProcess, email: str) -> tuple[Any, Any]:
    context = browser.new_context(
        ignore_https_errors=True, locale="fr-FR", viewport={"width": 390, "height": 844}
    )
    page = context.new_page()
    page.goto(f"{relay.url}/")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{relay.url}/accueil")
    return context, page


def test_nurse_creates_case_on_phone_and_reads_answer(
    browser: Any, relay: RelayProcess, tmp_path: Path
) -> None:
    photo = tmp_path / "plaie.jpg"
    photo.write_bytes(phone_jpeg(orientation=6))
    nurse_context, page = _login(browser, relay, NURSE.email)
    specialist_context, doctor = _login(browser, relay, SPECIALIST.email)
    try:
        page.goto(f"{relay.url}/teleexpertise")
        assert page.get_attribute("#photos", "capture") == "environment"
        # The 4G link drops during the first chunk: the page asks the relay where it is
        # and resumes by itself.
        dropped: list[str] = []

        def drop_first_chunk(route: Any) -> None:
            if route.request.method == "PATCH" and not dropped:
                dropped.append(route.request.url)
                route.abort("connectionreset")
            else:
                route.continue_()

        page.route("**/api/uploads/*", drop_first_chunk)
        page.set_input_files("#photos", str(photo))
        page.fill("#nir", NIR)
        page.fill("#family", "Durand")
        page.fill("#given", "Jeanne")
        page.fill("#birth", "1950-03-02")
        page.select_option("#site", "heel")
        page.select_option("#laterality", "left")
        page.fill("#length", "3")
        page.fill("#width", "2")
        page.fill("#duration", "3")
        page.fill("#question", "Plaie du talon qui ne cicatrise pas : conduite à tenir ?")
        page.wait_for_selector("#uploads li:has-text('reçue')", timeout=15_000)
        assert dropped  # the drop did happen, and the upload still completed
        page.click("#send")  # no consent yet: a clear refusal
        page.wait_for_selector("#error:not([hidden])")
        assert "consentement" in page.inner_text("#error")
        page.check("#consent")
        page.click("#send")
        page.wait_for_url("**/teleexpertise?id=*")
        page.wait_for_selector("#case-state:has-text('envoyée')")
        page.wait_for_selector("#case-photos img")
        case_url = page.url

        doctor.goto(f"{relay.url}/teleexpertise")
        doctor.click(f"#queue-list a[href='{case_url.removeprefix(relay.url)}']")
        doctor.click("text=Prendre en charge")
        doctor.wait_for_selector("#case-state:has-text('prise en charge')")
        doctor.click("#case-photos img")
        doctor.wait_for_selector("#viewer:not([hidden])")
        doctor.click("#zoom-in")
        assert "scale(1.5)" in (doctor.get_attribute("#viewer-img", "style") or "")
        doctor.click("#viewer-close")
        doctor.fill("#answer-text", "Détersion et hydrofibre ; à revoir dans 8 jours.")
        doctor.click("#answer-send")
        doctor.wait_for_selector("#case-state:has-text('répondue')")

        page.reload()
        page.wait_for_selector("#case-messages li:has-text('hydrofibre')")
    finally:
        nurse_context.close()
        specialist_context.close()
