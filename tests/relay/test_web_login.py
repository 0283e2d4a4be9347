"""A real browser logs in through the real login page (French web shell)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.accounts import NURSE, PASSWORD
from tests.harness.relay_process import RelayProcess

pytestmark = pytest.mark.browser


def test_nurse_logs_in_sees_home_and_logs_out(browser: Any, relay: RelayProcess) -> None:
    context = browser.new_context(ignore_https_errors=True, locale="fr-FR")
    page = context.new_page()
    try:
        page.goto(f"{relay.url}/")
        assert page.title() == "Connexion — Relais Santé"
        page.fill("#email", NURSE.email)
        page.fill("#password", "mauvais mot de passe")
        page.click("#login-submit")
        page.wait_for_selector("#login-error:not([hidden])")
        assert page.inner_text("#login-error") == "Adresse e-mail ou mot de passe incorrect."
        page.fill("#password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(f"{relay.url}/accueil")
        page.wait_for_selector("text=Bonjour Claire Martin")
        assert page.inner_text("#role") == "Infirmier·e"
        page.wait_for_selector("#teams li:has-text('MSP de Belleville')")
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["relais_session"]["httpOnly"] is True
        assert cookies["relais_session"]["secure"] is True
        # The audit trail page lists this login.
        page.click("text=Journal d'accès")
        page.wait_for_url(f"{relay.url}/journal")
        page.wait_for_selector("#own-events td:has-text('Connexion')")
        page.go_back()
        page.wait_for_selector("text=Bonjour Claire Martin")
        # The directory search works from the page.
        page.fill("#directory-q", "dermato")
        page.click("#directory-form button")
        page.wait_for_selector("#directory-results li:has-text('Hugo Petit')")
        page.click("#logout")
        page.wait_for_url(f"{relay.url}/")
        page.goto(f"{relay.url}/accueil")
        assert page.url == f"{relay.url}/"  # signed out: the home page sends back to login
    finally:
        context.close()
