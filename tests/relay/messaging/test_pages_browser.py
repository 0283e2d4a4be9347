"""The French messaging pages in a real browser: the inbox updates live (no reload) when a
message arrives, the thread page shows and answers it, the compose page starts a thread,
and the guest page opens with a one-time code and answers with a file. No inline script
(CSP 'self')."""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import Any

import pytest

from tests.harness.accounts import NURSE, PASSWORD, PHYSICIAN
from tests.harness.relay_process import RelayProcess
from tests.relay.messaging.helpers import mails_to

pytestmark = pytest.mark.browser


def _api(relay: RelayProcess, method: str, path: str, body: Any, token: str | None) -> Any:
    connection = http.client.HTTPSConnection(
        "localhost", relay.port, context=relay.ssl_context(), timeout=30
    )
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, json.dumps(body), headers)
    response = connection.getresponse()
    data = json.loads(response.read() or b"{}")
    connection.close()
    assert response.status < 300, data
    return data


def _login(page: Any, relay: RelayProcess, email: str) -> None:
    page.goto(f"{relay.url}/")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(f"{relay.url}/accueil")


def test_inbox_updates_live_and_threads_are_answered(browser: Any, relay: RelayProcess) -> None:
    context = browser.new_context(ignore_https_errors=True, locale="fr-FR")
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        _login(page, relay, PHYSICIAN.email)
        page.goto(f"{relay.url}/messagerie")
        page.wait_for_selector("#live:has-text('Mises à jour en direct')")
        subject = f"Arrivée en direct {time.monotonic_ns()}"
        nurse = _api(
            relay, "POST", "/api/login", {"email": NURSE.email, "password": PASSWORD}, None
        )
        _api(
            relay,
            "POST",
            "/api/threads",
            {"recipients": [PHYSICIAN.email], "subject": subject, "text": "Bonjour depuis l'API"},
            nurse["token"],
        )
        # No reload: the push brings it.
        line = page.wait_for_selector(f"#threads li.unread:has-text('{subject}')", timeout=10_000)
        assert line is not None
        page.click(f"#threads a:has-text('{subject}')")
        page.wait_for_selector("#messages article:has-text('Bonjour depuis l')")
        assert page.inner_text("#subject") == subject
        page.fill("#reply-text", "Réponse depuis la page.")
        page.click("#reply-form button")
        page.wait_for_selector("#messages article.mine:has-text('Réponse depuis la page.')")
        # Compose a new thread from the page.
        page.goto(f"{relay.url}/messagerie/nouveau")
        page.fill("#recipients", NURSE.email)
        page.fill("#subject", "Depuis le formulaire")
        page.fill("#text", "Texte du formulaire.")
        page.click("#send")
        page.wait_for_url(re.compile(r".*/messagerie/[0-9a-f]{32}$"))
        page.wait_for_selector("#messages article:has-text('Texte du formulaire.')")
        assert not [p for p in problems if "Content Security Policy" in p], problems
    finally:
        context.close()


def test_guest_page_opens_with_the_mailed_code(browser: Any, relay: RelayProcess) -> None:
    address = "invite.page@cabinet.example"
    nurse = _api(relay, "POST", "/api/login", {"email": NURSE.email, "password": PASSWORD}, None)
    _api(
        relay,
        "POST",
        "/api/threads",
        {"recipients": [address], "subject": "Pour l'invité", "text": "Texte pour l'invité."},
        nurse["token"],
    )
    deadline = time.monotonic() + 15
    link = None
    while link is None and time.monotonic() < deadline:
        for _, mail in mails_to(relay.data_dir, address):
            found = re.search(r"https://\S+/invite/[0-9a-f]{32}", mail.get_content())
            link = found.group(0) if found else None
        time.sleep(0.1)
    assert link is not None
    context = browser.new_context(ignore_https_errors=True, locale="fr-FR")
    page = context.new_page()
    try:
        page.goto(link)
        page.click("#send-code")
        page.wait_for_selector("#code-form:not([hidden])")
        code = None
        while code is None and time.monotonic() < deadline + 15:
            for _, mail in mails_to(relay.data_dir, address):
                found = re.search(r"\b(\d{8})\b", mail.get_content())
                code = found.group(1) if found else code
            time.sleep(0.1)
        assert code is not None
        page.fill("#code", code)
        page.click("#code-form button")
        page.wait_for_selector("#messages article:has-text('Texte pour l')")
        assert page.inner_text("#subject") == "Pour l'invité"
        page.fill("#reply-text", "Merci, bien reçu.")
        page.click("#reply-form button")
        page.wait_for_selector("#messages article.mine:has-text('Merci, bien reçu.')")
        # A file alone is an answer too (sent as a form, with the page's header).
        page.set_input_files(
            "#reply-files",
            files=[{"name": "plaie.png", "mimeType": "image/png", "buffer": b"\x89PNG image"}],
        )
        page.click("#reply-form button")
        page.wait_for_selector("#messages article.mine a:has-text('plaie.png')")
        assert page.inner_text("#reply-status") == "Réponse envoyée."
    finally:
        context.close()
