"use strict";
// Login page: password (+ TOTP when the account has it) or client certificate.
const form = document.getElementById("login-form");
const errorBox = document.getElementById("login-error");
const totpField = document.getElementById("totp-field");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  return { ok: response.ok, data };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const body = { email: form.email.value, password: form.password.value };
  if (!totpField.hidden && form.totp.value) body.totp = form.totp.value;
  const { ok, data } = await post("/api/login", body);
  if (ok) { window.location.assign("/accueil"); return; }
  const error = (data && data.error) || { code: "", message: "Le relais ne répond pas. Réessayez." };
  if (error.code === "totp_required") { totpField.hidden = false; form.totp.focus(); }
  showError(error.message);
});

document.getElementById("certificate-login").addEventListener("click", async () => {
  errorBox.hidden = true;
  const { ok, data } = await post("/api/login/certificate");
  if (ok) { window.location.assign("/accueil"); return; }
  showError((data && data.error && data.error.message) || "Connexion par certificat impossible.");
});
