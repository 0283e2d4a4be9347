"use strict";
// Home page of the signed-in professional.
const ROLES = {
  nurse: "Infirmier·e", physician: "Médecin", specialist: "Médecin spécialiste",
  coordinator: "Coordinateur·rice", admin: "Administrateur·rice",
};
const KINDS = { msp: "Maison de santé", cpts: "CPTS", service: "Service hospitalier", specialty_pool: "Équipe de spécialité" };

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;  // textContent: never interpret names as HTML
  return li;
}

async function load() {
  const response = await fetch("/api/me", { credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/"); return; }
  const me = await response.json();
  document.getElementById("greeting").textContent = `Bonjour ${me.display_name}`;
  document.getElementById("who").textContent = me.email;
  const role = ROLES[me.role] || me.role;
  document.getElementById("role").textContent = me.specialty ? `${role} — ${me.specialty}` : role;
  const teams = document.getElementById("teams");
  teams.replaceChildren();
  if (me.teams.length === 0) teams.appendChild(item("Vous n'êtes membre d'aucune équipe."));
  for (const team of me.teams) teams.appendChild(item(`${team.name} (${KINDS[team.kind] || team.kind}) — ${team.address}`));
}

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
  window.location.assign("/");
});

document.getElementById("directory-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = document.getElementById("directory-q").value.trim();
  const list = document.getElementById("directory-results");
  list.replaceChildren();
  const response = await fetch(`/api/directory?q=${encodeURIComponent(q)}`, { credentials: "same-origin" });
  const data = await response.json();
  if (!response.ok) { list.appendChild(item(data.error.message)); return; }
  for (const p of data.professionals) list.appendChild(item(`${p.display_name} — ${ROLES[p.role] || p.role}${p.specialty ? " (" + p.specialty + ")" : ""} — ${p.address}`));
  for (const t of data.teams) list.appendChild(item(`${t.name} — ${KINDS[t.kind] || t.kind} — ${t.address}`));
  if (!list.children.length) list.appendChild(item("Aucun résultat."));
});

document.getElementById("password-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("password-status");
  const response = await fetch("/api/me/password", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      current_password: document.getElementById("current-password").value,
      new_password: document.getElementById("new-password").value,
    }),
  });
  if (response.ok) {
    status.textContent = "Mot de passe modifié.";
    status.className = "";
    event.target.reset();
  } else {
    const data = await response.json();
    status.textContent = data.error.message;
    status.className = "error";
  }
  status.hidden = false;
});

load();
