"use strict";
// One thread: messages, attachments, delivery states; reply; updated live.
const { api, el, when, showError, me, uploadFiles, connectEvents } = Relais;
const threadId = decodeURIComponent(window.location.pathname.split("/").pop());
const STATES = { queued: "en attente", delivered: "remis", failed: "échec" };
const CHANNELS = { inbox: "messagerie", notification: "notification e-mail", smime: "e-mail chiffré S/MIME" };
let myId = null;
let participants = {};

function render(message) {
  const mine = message.author && message.author.professional_id === myId;
  const box = el("article", null, `message${mine ? " mine" : ""}${message.author ? "" : " system"}`);
  const header = el("header");
  header.appendChild(el("strong", message.author ? message.author.display_name : "Relais Santé"));
  header.appendChild(el("span", `${when(message.created_at)}${message.source === "smtp" ? " — par e-mail" : ""}`));
  box.appendChild(header);
  box.appendChild(el("div", message.text, "text"));
  if (message.attachments.length) {
    const files = el("div", null, "files");
    for (const file of message.attachments) {
      const link = el("a", `📎 ${file.filename} (${Math.ceil(file.size / 1024)} Ko)`);
      link.href = file.url;
      link.setAttribute("download", file.filename);
      files.appendChild(link);
    }
    box.appendChild(files);
  }
  if (mine && message.deliveries.length) {
    const list = el("ul", null, "deliveries");
    for (const d of message.deliveries) {
      const who = participants[d.participant_id] || d.participant_id;
      const item = el("li", `${who} : ${STATES[d.state] || d.state} (${CHANNELS[d.channel] || d.channel})${d.reason ? " — " + d.reason : ""}`, d.state);
      list.appendChild(item);
    }
    box.appendChild(list);
  }
  return box;
}

async function reload() {
  try {
    const thread = await api(`/api/threads/${encodeURIComponent(threadId)}`);
    document.getElementById("subject").textContent = thread.subject;
    document.title = `${thread.subject} — Relais Santé`;
    const patient = document.getElementById("patient");
    patient.hidden = !thread.patient;
    if (thread.patient) patient.textContent = `Patient : INS ${thread.patient.ins}`;
    participants = Object.fromEntries(thread.participants.map((p) => [p.id, p.display_name]));
    document.getElementById("participants").textContent =
      `Participants : ${thread.participants.map((p) => p.display_name).join(", ")}`;
    document.getElementById("messages").replaceChildren(...thread.messages.map(render));
    if (thread.messages.some((m) => !m.read)) {
      await api(`/api/threads/${encodeURIComponent(threadId)}/read`, { json: {} });
    }
  } catch (error) { showError(error); }
}

document.getElementById("reply-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("reply-status");
  try {
    const attachments = await uploadFiles(document.getElementById("reply-files"), status);
    await api(`/api/threads/${encodeURIComponent(threadId)}/messages`, {
      json: { text: document.getElementById("reply-text").value, attachments },
    });
    event.target.reset();
    status.textContent = "Message envoyé.";
    status.className = "";
    status.hidden = false;
    await reload();
  } catch (error) {
    status.textContent = error.message;
    status.className = "error";
    status.hidden = false;
  }
});

async function start() {
  myId = (await me()).id;
  connectEvents((event) => {
    if (event.type === "ready" || event.type === "resync") reload();
    else if (event.thread_id === threadId && event.type !== "read") reload();
  }, (status) => { document.getElementById("live").textContent = status; });
}

start().catch(showError);
