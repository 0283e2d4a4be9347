"use strict";
// Guest view: one thread, opened with a one-time code sent to the invited address.
const participantId = decodeURIComponent(window.location.pathname.split("/").pop());

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;  // never as HTML
  if (className) node.className = className;
  return node;
}

async function call(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (options.json !== undefined) {
    init.method = "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) {
    const error = new Error(data.error ? data.error.message : `Erreur ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(id, text, isError) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.className = isError ? "error" : "";
  node.hidden = false;
}

async function showThread() {
  const thread = await call("/api/guest/thread");
  document.getElementById("unlock").hidden = true;
  document.getElementById("conversation").hidden = false;
  document.getElementById("subject").textContent = thread.subject;
  const patient = document.getElementById("patient");
  patient.hidden = !thread.patient;
  if (thread.patient) patient.textContent = `Patient : INS ${thread.patient.ins}`;
  document.getElementById("participants").textContent = `Participants : ${thread.participants.join(", ")}`;
  const list = document.getElementById("messages");
  list.replaceChildren();
  for (const message of thread.messages) {
    const box = el("article", null, `message${message.mine ? " mine" : ""}`);
    const header = el("header");
    header.appendChild(el("strong", message.author || "Relais Santé"));
    header.appendChild(el("span", new Date(message.created_at).toLocaleString("fr-FR")));
    box.appendChild(header);
    box.appendChild(el("div", message.text, "text"));
    for (const file of message.attachments) {
      const link = el("a", `📎 ${file.filename}`);
      link.href = file.url;
      link.setAttribute("download", file.filename);
      box.appendChild(link);
    }
    list.appendChild(box);
  }
}

document.getElementById("send-code").addEventListener("click", async () => {
  try {
    const sent = await call(`/api/guest/${encodeURIComponent(participantId)}/code`, { method: "POST" });
    say("unlock-status", `Un code a été envoyé à ${sent.sent_to}. Il est valable quelques minutes.`);
    document.getElementById("code-form").hidden = false;
  } catch (error) { say("unlock-status", error.message, true); }
});

document.getElementById("code-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await call(`/api/guest/${encodeURIComponent(participantId)}/session`, {
      json: { code: document.getElementById("code").value.trim() },
    });
    await showThread();
  } catch (error) { say("unlock-status", error.message, true); }
});

document.getElementById("reply-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = document.getElementById("reply-text").value;
  const files = document.getElementById("reply-files").files;
  if (!text.trim() && files.length === 0) {
    say("reply-status", "Écrivez un message ou joignez un fichier.", true);
    return;
  }
  try {
    if (files.length === 0) {
      await call("/api/guest/messages", { json: { text } });
    } else {
      say("reply-status", "Envoi en cours…");
      const form = new FormData();
      form.append("text", text);
      for (const file of files) form.append("files", file, file.name);
      // The header proves the request comes from this page, not from a form of another site.
      await call("/api/guest/messages", {
        method: "POST", headers: { "X-Relais-Guest": "1" }, body: form,
      });
    }
    event.target.reset();
    say("reply-status", "Réponse envoyée.");
    await showThread();
  } catch (error) { say("reply-status", error.message, true); }
});

// A guest session already open (same browser): show the thread directly.
showThread().catch(() => {});
