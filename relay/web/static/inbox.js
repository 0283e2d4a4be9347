"use strict";
// The inbox: threads of the professional and of their teams; updated live, without reload.
const { api, el, when, showError, me, connectEvents } = Relais;

let loading = null;
let again = false;

function line(thread) {
  const li = el("li", null, thread.unread_count ? "unread" : "");
  const link = el("a");
  link.href = `/messagerie/${encodeURIComponent(thread.id)}`;
  link.appendChild(el("span", thread.subject, "subject"));
  const badge = el("span", thread.unread_count ? String(thread.unread_count) : "", "badge");
  badge.hidden = !thread.unread_count;
  link.appendChild(badge);
  const names = thread.participants.map((p) => p.display_name).join(", ");
  link.appendChild(el("span", `${names}${thread.patient ? " — patient identifié" : ""}`, "meta"));
  link.appendChild(el("span", when(thread.last_message_at), "meta"));
  li.appendChild(link);
  li.dataset.threadId = thread.id;
  return li;
}

async function reload() {
  if (loading) { again = true; return loading; }
  loading = (async () => {
    try {
      const team = document.getElementById("box").value;
      const data = await api(`/api/threads${team ? `?team=${encodeURIComponent(team)}` : ""}`);
      const list = document.getElementById("threads");
      list.replaceChildren(...data.threads.map(line));
      if (!data.threads.length) list.appendChild(el("li", "Aucune conversation.", "muted"));
      const unread = document.getElementById("unread");
      unread.textContent = String(data.unread);
      unread.hidden = !data.unread;
      document.title = data.unread ? `(${data.unread}) Messagerie — Relais Santé` : "Messagerie — Relais Santé";
    } catch (error) { showError(error); }
  })();
  await loading;
  loading = null;
  if (again) { again = false; await reload(); }
}

async function start() {
  const who = await me();
  const box = document.getElementById("box");
  for (const team of who.teams) {
    const option = el("option", `Équipe : ${team.name}`);
    option.value = team.id;
    box.appendChild(option);
  }
  box.addEventListener("change", reload);
  connectEvents((event) => {
    if (["ready", "resync", "message", "read", "delivery"].includes(event.type)) reload();
  }, (status) => { document.getElementById("live").textContent = status; });
}

start().catch(showError);
