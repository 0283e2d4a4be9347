"use strict";
// Audit trail page: the professional's own trail; the search form for administrators.
const ACTIONS = {
  login_succeeded: "Connexion", login_failed: "Connexion refusée", logout: "Déconnexion",
  attachment_downloaded: "Téléchargement d'un fichier", import: "Dépôt d'un fichier",
  access_denied: "Accès refusé", account_created: "Création de compte",
  credentials_changed: "Changement d'identifiants", team_changed: "Modification d'équipe",
  audit_read: "Consultation du journal", audit_searched: "Recherche dans le journal",
  audit_started: "Démarrage du journal", audit_stopped: "Arrêt du journal",
  key_rotated: "Rotation de clé", message_read: "Lecture d'un message", case_read: "Lecture d'une demande",
  photo_viewed: "Affichage d'une photo", message_sent: "Envoi d'un message",
};
const OUTCOMES = { "0": "Succès", "4": "Échec", "8": "Échec grave", "12": "Échec majeur" };

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function when(value) {
  const date = new Date(value);
  return isNaN(date) ? String(value) : date.toLocaleString("fr-FR");
}

function actorOf(event) {
  // The requestor: account id (altId), else its RPPS or the system's name.
  const agents = (event.event && event.event.agent) || [];
  const agent = agents.find((a) => a.requestor) || agents[0];
  if (!agent) return "";
  if (agent.altId) return agent.altId;
  const who = agent.who || {};
  return (who.identifier && who.identifier.value) || who.display || "";
}

function fill(tbody, events, withActor) {
  tbody.replaceChildren();
  if (events.length === 0) {
    const row = document.createElement("tr");
    const td = cell("Aucun événement.");
    td.colSpan = withActor ? 5 : 4;
    row.appendChild(td);
    tbody.appendChild(row);
  }
  for (const e of events) {
    const row = document.createElement("tr");
    row.append(cell(e.index), cell(when(e.recorded_at)), cell(ACTIONS[e.action] || e.action));
    if (withActor) row.appendChild(cell(actorOf(e)));
    row.appendChild(cell(OUTCOMES[e.outcome] || e.outcome));
    tbody.appendChild(row);
  }
}

async function load() {
  const me = await fetch("/api/me", { credentials: "same-origin" });
  if (me.status === 401) { window.location.assign("/"); return; }
  const profile = await me.json();
  const response = await fetch("/api/audit/me?limit=100", { credentials: "same-origin" });
  const data = await response.json();
  fill(document.getElementById("own-events"), response.ok ? data.events : [], false);
  if (profile.role === "admin") document.getElementById("admin-search").hidden = false;
}

document.getElementById("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const params = new URLSearchParams();
  for (const name of ["actor", "patient", "resource", "outcome"]) {
    if (form[name].value) params.set(name, form[name].value.trim());
  }
  if (form.since.value) params.set("since", `${form.since.value}T00:00:00+00:00`);
  if (form.until.value) params.set("until", `${form.until.value}T23:59:59+00:00`);
  const error = document.getElementById("search-error");
  error.hidden = true;
  const response = await fetch(`/api/audit/events?${params}`, { credentials: "same-origin" });
  const data = await response.json();
  if (!response.ok) { error.textContent = data.error.message; error.hidden = false; return; }
  fill(document.getElementById("search-events"), data.events, true);
});

load();
