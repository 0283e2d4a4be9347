"use strict";
// Tele-expertise page: the nurse's request (photos uploaded while typing, resumable over a
// weak link), the specialist's queue, and one case with its photo viewer and answer form.
(() => {
  const CHUNK = 256 * 1024;
  const SITES = [
    ["heel", "Talon", true], ["foot", "Pied", true], ["toe", "Orteil", true],
    ["ankle", "Cheville", true], ["lower_leg", "Jambe", true], ["knee", "Genou", true],
    ["thigh", "Cuisse", true], ["sacrum", "Sacrum", false], ["buttock", "Fesse", true],
    ["hip", "Hanche", true], ["back", "Dos", false], ["abdomen", "Abdomen", false],
    ["chest", "Thorax", false], ["breast", "Sein", true], ["perineum", "Périnée", false],
    ["hand", "Main", true], ["finger", "Doigt", true], ["forearm", "Avant-bras", true],
    ["elbow", "Coude", true], ["upper_arm", "Bras", true], ["shoulder", "Épaule", true],
    ["neck", "Cou", false], ["face", "Visage", false], ["scalp", "Cuir chevelu", false],
    ["head", "Tête", false],
  ];
  const URGENCY = { urgent: "Urgent (24 h)", "72h": "Sous 72 h", routine: "Non urgent (7 jours)" };
  const EVENTS = {
    submit: "Envoi", accept: "Prise en charge", release: "Rendue à l'équipe", reject: "Refus",
    cancel: "Annulation", answer: "Réponse", ask_requester: "Question au demandeur",
    reply: "Réponse du demandeur", follow_up: "Question complémentaire", close: "Clôture",
    remind: "Relance", escalate: "Transmise à l'équipe", expire: "Expiration",
  };
  const $ = (id) => document.getElementById(id);
  let me = null;
  const photos = new Map(); // file key -> {photoId, done: Promise}

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options };
    if (options.json !== undefined) {
      init.method = init.method || "POST";
      init.headers = { "Content-Type": "application/json", ...(options.headers || {}) };
      init.body = JSON.stringify(options.json);
    }
    const response = await fetch(path, init);
    if (response.status === 401) { window.location.assign("/"); throw new Error("session"); }
    const data = await response.json();
    if (!response.ok) {
      const error = new Error(data.error ? data.error.message : `Erreur ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text; // never as HTML
    if (className) node.className = className;
    return node;
  }

  const when = (iso) => new Date(iso).toLocaleString("fr-FR", { dateStyle: "short", timeStyle: "short" });
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function showError(error) {
    const box = $("error");
    box.textContent = error.message || String(error);
    box.hidden = false;
  }

  // --- Resumable upload (tus-like): each chunk at the relay's acknowledged offset. -----------

  function sendChunk(url, offset, blob, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PATCH", url);
      xhr.withCredentials = true;
      xhr.setRequestHeader("Content-Type", "application/offset+octet-stream");
      xhr.setRequestHeader("Upload-Offset", String(offset));
      xhr.upload.onprogress = (event) => onProgress(offset + event.loaded);
      xhr.onload = () => {
        let data = {};
        try { data = JSON.parse(xhr.responseText); } catch (_) { /* empty */ }
        if (xhr.status === 200) resolve(data);
        else {
          const error = new Error(data.error ? data.error.message : `Erreur ${xhr.status}`);
          error.status = xhr.status;
          reject(error);
        }
      };
      xhr.onerror = () => reject(Object.assign(new Error("Connexion perdue"), { network: true }));
      xhr.send(blob);
    });
  }

  async function currentOffset(url) {
    const response = await fetch(url, { method: "HEAD", credentials: "same-origin" });
    if (!response.ok) throw new Error("Envoi introuvable : reprenez la photo.");
    return Number(response.headers.get("Upload-Offset"));
  }

  async function uploadPhoto(file, row) {
    const bar = row.querySelector("progress");
    const label = row.querySelector("span");
    const type = file.type || "application/octet-stream";
    const created = await api("/api/uploads", { json: { size: file.size, content_type: type } });
    const url = `/api/uploads/${created.id}`;
    let offset = 0;
    let failures = 0;
    bar.max = file.size;
    while (true) {
      try {
        const state = await sendChunk(url, offset, file.slice(offset, offset + CHUNK), (n) => { bar.value = n; });
        failures = 0;
        offset = state.offset;
        bar.value = offset;
        if (state.complete) {
          label.textContent = `${file.name || "Photo"} : reçue ✓`;
          return state.photo_id;
        }
      } catch (error) {
        if (!error.network && error.status !== 409 && error.status !== 503) throw error;
        // Weak link or relay restarting: wait, ask where the relay is, resume from there.
        failures += 1;
        label.textContent = `${file.name || "Photo"} : connexion perdue, reprise…`;
        await sleep(Math.min(30000, 1000 * 2 ** Math.min(failures, 5)));
        try { offset = await currentOffset(url); } catch (lost) { if (failures > 20) throw lost; }
      }
    }
  }

  function addPhotos(files) {
    for (const file of files) {
      const key = `${file.name}:${file.size}:${file.lastModified}:${Math.random()}`;
      const row = el("li");
      row.append(el("span", `${file.name || "Photo"} : envoi…`), el("progress"));
      $("uploads").append(row);
      const done = uploadPhoto(file, row).catch((error) => {
        row.querySelector("span").textContent = `${file.name || "Photo"} : ${error.message}`;
        row.className = "error";
        photos.delete(key);
        return null;
      });
      photos.set(key, done);
    }
  }

  // --- New request ---------------------------------------------------------------------------

  function requestBody() {
    const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
    const body = {
      patient: {
        kind: "ins", nir: $("nir").value.replace(/\s/g, ""), family_name: $("family").value,
        given_name: $("given").value, birth_date: $("birth").value, sex: $("sex").value,
      },
      recipient: { team_id: $("team").value.trim() },
      question: $("question").value,
      wound: {
        site: $("site").value, laterality: $("laterality").value,
        size_cm: { length: number("length"), width: number("width") },
        duration: { value: number("duration"), unit: $("unit").value },
        treatment: $("treatment").value,
      },
      urgency: $("urgency").value,
      submit: true,
    };
    if ($("consent").checked) {
      body.consent = {
        collected_by: me.id, collected_at: new Date().toISOString(), method: $("consent-method").value,
      };
    }
    return body;
  }

  async function submitCase(event) {
    event.preventDefault();
    const status = $("form-status");
    $("send").disabled = true;
    try {
      status.textContent = "Envoi des photos…";
      const ids = (await Promise.all(photos.values())).filter(Boolean);
      const body = { ...requestBody(), photo_ids: ids };
      // One key per request: a retry after a lost answer returns the same case.
      const key = sessionStorage.getItem("case-key") || crypto.randomUUID();
      sessionStorage.setItem("case-key", key);
      status.textContent = "Envoi de la demande…";
      let created = null;
      for (let attempt = 0; created === null; attempt += 1) {
        try {
          created = await api("/api/cases", { json: body, headers: { "Idempotency-Key": key } });
        } catch (error) {
          if (error.status || attempt >= 5) throw error;
          await sleep(2000 * (attempt + 1));
        }
      }
      sessionStorage.removeItem("case-key");
      window.location.assign(`/teleexpertise?id=${encodeURIComponent(created.id)}`);
    } catch (error) {
      status.textContent = "";
      showError(error);
    } finally {
      $("send").disabled = false;
    }
  }

  // --- Lists ---------------------------------------------------------------------------------

  function caseItem(summary) {
    const item = el("li");
    const link = el("a", `Demande du ${when(summary.created_at)}`);
    link.href = `/teleexpertise?id=${encodeURIComponent(summary.id)}`;
    item.append(link, " ", el("span", summary.state_label, "badge"), " ",
      el("span", URGENCY[summary.urgency] || "", summary.urgency === "urgent" ? "urgent" : "muted"));
    if (summary.due_at) item.append(el("div", `Échéance : ${when(summary.due_at)}`, "muted"));
    return item;
  }

  async function showMine() {
    const { cases } = await api("/api/cases");
    const list = $("mine-list");
    list.replaceChildren(...(cases.length ? cases.map(caseItem) : [el("li", "Aucune demande.", "muted")]));
    $("mine").hidden = false;
  }

  async function showQueue() {
    const query = new URLSearchParams();
    if ($("filter-urgency").value) query.set("urgency", $("filter-urgency").value);
    if ($("filter-due").value) query.set("due_before", `${$("filter-due").value}T23:59:59+00:00`);
    const { cases } = await api(`/api/cases/queue?${query}`);
    const list = $("queue-list");
    list.replaceChildren(...(cases.length ? cases.map(caseItem) : [el("li", "Aucune demande en attente.", "muted")]));
    $("queue").hidden = false;
  }

  // --- One case ------------------------------------------------------------------------------

  let zoom = 1;
  function openViewer(src) {
    zoom = 1;
    $("viewer-img").src = src;
    $("viewer-img").style.transform = "scale(1)";
    $("viewer").hidden = false;
  }
  function setZoom(factor) {
    zoom = Math.min(8, Math.max(0.25, zoom * factor));
    $("viewer-img").style.transform = `scale(${zoom})`;
  }

  async function act(caseId, event, text) {
    const json = text === undefined ? { event } : { event, text };
    await api(`/api/cases/${encodeURIComponent(caseId)}/events`, { json });
    await showCase(caseId);
  }

  function button(label, onClick) {
    const node = el("button", label);
    node.type = "button";
    node.addEventListener("click", () => onClick().catch(showError));
    return node;
  }

  async function showCase(caseId) {
    const view = await api(`/api/cases/${encodeURIComponent(caseId)}`);
    $("case").hidden = false;
    $("case-state").textContent = view.state_label;
    const request = view.request || {};
    const wound = request.wound || {};
    const facts = [
      ["Urgence", URGENCY[view.urgency]],
      ["Échéance", view.due_at ? when(view.due_at) : "—"],
      ["Patient", request.patient ? `${request.patient.family_name || ""} ${request.patient.given_name || ""}`.trim() : "—"],
      ["Localisation", wound.site ? `${(SITES.find((s) => s[0] === wound.site) || [0, wound.site])[1]} ${wound.laterality || ""}` : "—"],
      ["Taille", wound.size_cm ? `${wound.size_cm.length} × ${wound.size_cm.width} cm` : "—"],
      ["Traitement actuel", wound.treatment || "—"],
      ["Question", request.question || "—"],
    ];
    $("case-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
    const figureOf = (owner, photo) => {
      const figure = el("figure");
      const img = el("img");
      const base = `/api/cases/${encodeURIComponent(owner)}/photos/${encodeURIComponent(photo.id)}`;
      img.src = `${base}?size=thumbnail`;
      img.alt = `Photo du ${when(photo.at)}`;
      img.addEventListener("click", () => openViewer(base));
      figure.append(img, el("figcaption", when(photo.at)));
      if (photo.dicom) {
        // DICOM upload: what was acquired (no identity; the header's identity stays out).
        const d = photo.dicom;
        const facts = [d.modality, d.body_part || d.anatomic_region,
          d.study_date ? `examen du ${d.study_date}` : null,
          d.rows && d.columns ? `${d.columns}×${d.rows}` : null,
          d.frames > 1 ? `${d.frames} images` : null].filter(Boolean);
        figure.append(el("figcaption", `DICOM — ${facts.join(", ")}`, "muted"));
      }
      return figure;
    };
    $("case-photos").replaceChildren(...view.photos.map((photo) => figureOf(caseId, photo)));
    // The same wound in earlier requests, by date: to compare the healing side by side.
    const earlier = view.earlier_photos || [];
    $("earlier-title").hidden = earlier.length === 0;
    $("earlier-photos").replaceChildren(...earlier.map((photo) => figureOf(photo.case_id, photo)));
    const names = { answer: "Réponse", question: "Question du spécialiste", reply: "Réponse du demandeur",
      follow_up: "Question complémentaire", rejection: "Motif du refus" };
    $("case-messages").replaceChildren(...(view.messages.length
      ? view.messages.map((m) => el("li", `${names[m.kind] || m.kind} — ${when(m.at)}\n${m.text}`))
      : [el("li", "Pas encore de réponse.", "muted")]));
    $("case-history").replaceChildren(...view.history.map((h) => el("li", `${when(h.at)} : ${EVENTS[h.event] || h.event}`)));

    const actions = [];
    const form = $("answer-form");
    form.hidden = true;
    const mineAsRequester = view.requester_id === me.id;
    const doctor = me.role === "physician" || me.role === "specialist";
    if (doctor && !mineAsRequester) {
      if (view.state === "submitted") actions.push(button("Prendre en charge", () => act(caseId, "accept")));
      if (view.assignee_id === me.id && ["accepted", "awaiting_requester"].includes(view.state)) {
        if (view.team_id) actions.push(button("Rendre à l'équipe", () => act(caseId, "release")));
        form.hidden = false;
        $("answer-label").textContent = "Votre réponse";
        form.dataset.event = "answer";
      }
    }
    if (mineAsRequester) {
      if (view.state === "answered") {
        actions.push(button("Clôturer", () => act(caseId, "close")));
        form.hidden = false;
        $("answer-label").textContent = "Question complémentaire";
        form.dataset.event = "follow_up";
      } else if (view.state === "awaiting_requester") {
        form.hidden = false;
        $("answer-label").textContent = "Votre réponse au spécialiste";
        form.dataset.event = "reply";
      }
    }
    form.dataset.caseId = caseId;
    $("case-actions").replaceChildren(...actions);
  }

  // --- Start ---------------------------------------------------------------------------------

  async function start() {
    me = await api("/api/me");
    $("who").textContent = me.display_name;
    const site = $("site");
    for (const [key, label] of SITES) { const o = el("option", label); o.value = key; site.append(o); }
    const caseId = new URLSearchParams(window.location.search).get("id");
    if (caseId) { await showCase(caseId); return; }
    if (["nurse", "physician", "specialist"].includes(me.role)) {
      $("new-case").hidden = false;
      await showMine();
    }
    if (me.role === "physician" || me.role === "specialist") await showQueue();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("photos").addEventListener("change", (event) => { addPhotos(event.target.files); event.target.value = ""; });
    $("case-form").addEventListener("submit", submitCase);
    $("filter-urgency").addEventListener("change", () => showQueue().catch(showError));
    $("filter-due").addEventListener("change", () => showQueue().catch(showError));
    $("zoom-in").addEventListener("click", () => setZoom(1.5));
    $("zoom-out").addEventListener("click", () => setZoom(1 / 1.5));
    $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });
    $("answer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      act(form.dataset.caseId, form.dataset.event, $("answer-text").value)
        .then(() => { $("answer-text").value = ""; })
        .catch(showError);
    });
    start().then(listen).catch(showError);
  });

  // Live updates: the relay pushes case changes (identifiers only) on /ws/events.
  function listen(delay = 1000) {
    const socket = new WebSocket(`wss://${window.location.host}/ws/events`);
    socket.addEventListener("message", (message) => {
      let event = null;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (!event || event.type !== "case") return;
      const shown = new URLSearchParams(window.location.search).get("id");
      if (shown) {
        if (shown === event.case_id) showCase(shown).catch(showError);
        return;
      }
      if (!$("mine").hidden) showMine().catch(showError);
      if (!$("queue").hidden) showQueue().catch(showError);
    });
    socket.addEventListener("close", (closed) => {
      if (closed.code === 4401) return;  // signed out: no reconnection
      window.setTimeout(() => listen(Math.min(delay * 2, 30000)), delay);
    });
  }
})();
