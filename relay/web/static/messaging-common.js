"use strict";
// Shared by the messaging pages: API calls, DOM helpers, the /ws/events push client.
const Relais = (() => {
  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options };
    if (options.json !== undefined) {
      init.method = init.method || "POST";
      init.headers = { "Content-Type": "application/json", ...(options.headers || {}) };
      init.body = JSON.stringify(options.json);
    }
    const response = await fetch(path, init);
    if (response.status === 401) { window.location.assign("/"); throw new Error("session"); }
    const data = response.status === 204 ? {} : await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : `Erreur ${response.status}`);
    return data;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;  // never as HTML
    if (className) node.className = className;
    return node;
  }

  function when(iso) {
    return new Date(iso).toLocaleString("fr-FR", { dateStyle: "short", timeStyle: "short" });
  }

  function showError(error) {
    const box = document.getElementById("error");
    if (!box) return;
    box.textContent = error.message || String(error);
    box.hidden = false;
  }

  async function me() {
    const who = await api("/api/me");
    const slot = document.getElementById("who");
    if (slot) slot.textContent = who.display_name;
    return who;
  }

  // Uploads the chosen files one by one (raw bodies), returning attachment references.
  async function uploadFiles(input, status) {
    const refs = [];
    for (const file of input.files) {
      if (status) { status.hidden = false; status.textContent = `Envoi de ${file.name}…`; }
      const stored = await api("/api/files", {
        method: "POST",
        headers: { "Content-Type": file.type || "application/octet-stream" },
        body: file,
      });
      refs.push({ file_id: stored.id, filename: file.name });
    }
    return refs;
  }

  // Live events: reconnects by itself and resumes after the last offset seen.
  function connectEvents(onEvent, onStatus) {
    let offset = null;
    let delay = 1000;
    function open() {
      const scheme = window.location.protocol === "https:" ? "wss" : "ws";
      const query = offset ? `?after=${encodeURIComponent(offset)}` : "";
      const socket = new WebSocket(`${scheme}://${window.location.host}/ws/events${query}`);
      socket.addEventListener("message", (message) => {
        const event = JSON.parse(message.data);
        if (event.offset) offset = event.offset;
        if (event.type === "ready") { delay = 1000; onStatus("Mises à jour en direct"); }
        if (event.type === "resync") offset = null;
        onEvent(event);
      });
      socket.addEventListener("close", () => {
        onStatus("Reconnexion…");
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 30000);
      });
    }
    open();
  }

  return { api, el, when, showError, me, uploadFiles, connectEvents };
})();
