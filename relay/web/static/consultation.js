"use strict";
// Teleconsultation page: device check, waiting room, mesh call (plain WebRTC, no build step).
// Signaling protocol: /api/consultations/protocol.json. The join token arrives in the URL
// fragment (#t=...), which browsers never send to the server; it is exchanged for an HttpOnly
// guest pass cookie before the socket opens, and removed from the address bar.

(() => {
  const $ = (id) => document.getElementById(id);
  const consultationId = location.pathname.split("/").filter(Boolean).pop();
  const ROLES = {
    physician: "Médecin", nurse: "Infirmier·e", specialist: "Spécialiste",
    patient: "Patient·e", interpreter: "Interprète", guest: "Invité·e",
  };
  // The relay's recording peer (see the protocol document): while a recording runs, each
  // participant sends it their camera and micro over one extra, send-only connection.
  const RECORDER = "recorder";
  const STEPS = ["birth-step", "check-step", "waiting-step", "call-step", "end-step"];

  const state = {
    guest: false,
    token: null,
    birthDate: null,
    ws: null,
    me: null,
    permissions: [],
    rtc: { iceServers: [] },
    resumeToken: null,
    graceSeconds: 30,
    dropDeadline: null,
    stream: null,
    peers: new Map(), // participant id -> { pc, tile, info }
    people: new Map(), // participant id -> ParticipantInfo (admitted)
    finished: false,
    recordingConsent: null,
    recorder: null, // RTCPeerConnection to the recording peer while recording runs
    turnTimer: null,
    pingTimer: null,
  };

  function show(step) {
    for (const id of STEPS) $(id).hidden = id !== step;
  }

  function status(text) {
    const banner = $("status");
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function finish(title, text) {
    state.finished = true;
    clearInterval(state.pingTimer);
    clearTimeout(state.turnTimer);
    for (const id of [...state.peers.keys()]) dropPeer(id);
    stopRecorder();
    if (state.stream) for (const track of state.stream.getTracks()) track.stop();
    $("end-title").textContent = title;
    $("end-text").textContent = text;
    status("");
    show("end-step");
  }

  // --- Entry: guest link or professional session -------------------------------------------

  function readToken() {
    const key = `relais-consultation-${consultationId}`;
    const match = /^#t=([A-Za-z0-9._-]+)$/.exec(location.hash);
    if (match) {
      sessionStorage.setItem(key, match[1]);  // survives a reload, not the tab
      history.replaceState(null, "", location.pathname);  // the token leaves the address bar
      return match[1];
    }
    return sessionStorage.getItem(key);
  }

  async function guestPass() {
    const body = { token: state.token };
    if (state.birthDate) body.birth_date = state.birthDate;
    const response = await fetch(`/api/consultations/${consultationId}/join`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (response.ok) {
      $("who").textContent = data.participant.display_name;
      return data;
    }
    const error = data.error || { code: "error", message: "Le lien n'a pas pu être vérifié." };
    if (error.code === "birth_date_required" || error.code === "birth_date_mismatch") {
      show("birth-step");
      const message = $("birth-error");
      message.hidden = error.code === "birth_date_required";
      message.textContent = error.message;
      return null;
    }
    finish("Accès impossible", error.message);
    return null;
  }

  async function start() {
    state.token = readToken();
    state.guest = Boolean(state.token);
    if (state.guest) {
      if (!(await guestPass())) return;
    } else {
      const response = await fetch("/api/me", { credentials: "same-origin" });
      if (response.status === 401) {
        finish("Connexion requise",
          "Connectez-vous à Relais Santé, ou ouvrez le lien de consultation que vous avez reçu.");
        return;
      }
      const me = await response.json();
      $("who").textContent = me.display_name;
    }
    await deviceCheck();
  }

  $("birth-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.birthDate = $("birth-date").value;
    if (await guestPass()) await deviceCheck();
  });

  // --- Device check ------------------------------------------------------------------------

  async function deviceCheck() {
    show("check-step");
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      $("preview").srcObject = state.stream;
      $("device-status").textContent = "Caméra et micro détectés.";
      meter(state.stream);
    } catch (error) {
      state.stream = new MediaStream();
      $("device-status").textContent =
        "Caméra ou micro indisponible : vous pourrez entendre et voir les autres, et écrire.";
    }
    $("join").disabled = false;
  }

  function meter(stream) {
    if (!stream.getAudioTracks().length || !window.AudioContext) return;
    const context = new AudioContext();
    const analyser = context.createAnalyser();
    context.createMediaStreamSource(stream).connect(analyser);
    const data = new Uint8Array(analyser.fftSize);
    const bar = $("meter-level");
    const draw = () => {
      if (state.finished) return context.close();
      analyser.getByteTimeDomainData(data);
      let peak = 0;
      for (const value of data) peak = Math.max(peak, Math.abs(value - 128));
      bar.style.width = `${Math.min(100, peak * 2)}%`;
      requestAnimationFrame(draw);
    };
    draw();
  }

  $("join").addEventListener("click", () => {
    $("join").disabled = true;
    $("local-video").srcObject = state.stream;
    if (!$("consent-video").checked) {
      // No consent to video: join with the camera off (voice and chat only).
      for (const track of state.stream.getVideoTracks()) track.enabled = false;
      $("camera").textContent = "Rétablir la caméra";
      $("camera").setAttribute("aria-pressed", "true");
    }
    connect();
  });

  // --- Signaling socket --------------------------------------------------------------------

  function send(message) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
  }

  function connect() {
    const query = state.guest ? "?as=guest" : "";
    const ws = new WebSocket(`wss://${location.host}/ws/consultations/${consultationId}${query}`);
    state.ws = ws;
    ws.addEventListener("open", () => send({ type: "hello", protocol: 1 }));
    ws.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      handle(message).catch((error) => console.error("signaling", error));
    });
    ws.addEventListener("close", (event) => onClose(ws, event));
    clearInterval(state.pingTimer);
    state.pingTimer = setInterval(() => send({ type: "ping" }), 20000);
  }

  async function onClose(ws, event) {
    if (ws !== state.ws || state.finished) return;
    if (event.code === 4002) {
      finish("Consultation ouverte ailleurs",
        "Vous avez rejoint cette consultation depuis une autre fenêtre ou un autre appareil.");
      return;
    }
    // 1000/4003/4004 are final; 1008 is a refused pass or a flood. Others: try to resume.
    if ([1000, 1002, 1003, 1007, 1008, 1009, 4000, 4003, 4004].includes(event.code)) {
      if (!state.finished) finish("Consultation interrompue", "La connexion a été fermée.");
      return;
    }
    if (!state.resumeToken) {
      finish("Connexion perdue", "Rechargez la page pour rejoindre à nouveau la consultation.");
      return;
    }
    if (state.dropDeadline === null) state.dropDeadline = Date.now() + state.graceSeconds * 1000;
    if (Date.now() > state.dropDeadline) {
      finish("Connexion perdue", "Rechargez la page pour rejoindre à nouveau la consultation.");
      return;
    }
    status("Connexion perdue, reconnexion en cours…");
    setTimeout(async () => {
      if (state.guest && !(await guestPass().catch(() => null))) return;
      connect();
    }, 1000);
  }

  async function handle(message) {
    switch (message.type) {
      case "welcome":
        send(state.resumeToken ? { type: "resume", token: state.resumeToken } : { type: "join" });
        break;
      case "waiting":
        state.me = message.you;
        state.resumeToken = message.resume_token;
        state.graceSeconds = message.grace_seconds;
        state.dropDeadline = null;
        show("waiting-step");
        status(message.host_present ? "" : "Le soignant n'est pas encore connecté.");
        if (!message.resumed) sendVideoConsent();
        break;
      case "joined":
        state.me = message.you;
        state.resumeToken = message.resume_token;
        state.graceSeconds = message.grace_seconds;
        state.dropDeadline = null;
        status("");
        if (!message.resumed) sendVideoConsent();
        await enterCall(message, message.resumed);
        break;
      case "admitted":
        status("");
        await enterCall(message, false);
        break;
      case "participant_joined":
        state.people.set(message.participant.participant_id, message.participant);
        renderPeople();
        break;
      case "participant_left":
        state.people.delete(message.participant_id);
        dropPeer(message.participant_id);
        renderPeople();
        break;
      case "waiting_list":
        renderWaiting(message.waiting);
        break;
      case "offer":
        await onOffer(message);
        break;
      case "answer": {
        if (message.from === RECORDER) {
          if (state.recorder) await state.recorder.setRemoteDescription({ type: "answer", sdp: message.sdp });
          break;
        }
        const peer = state.peers.get(message.from);
        if (peer) await peer.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        break;
      }
      case "candidate": {
        const peer = state.peers.get(message.from);
        if (peer && message.candidate) {
          await peer.pc.addIceCandidate({
            candidate: message.candidate, sdpMid: message.sdpMid,
            sdpMLineIndex: message.sdpMLineIndex, usernameFragment: message.usernameFragment,
          }).catch(() => {});
        }
        break;
      }
      case "media_state": {
        const info = state.people.get(message.from);
        if (info) { info.audio = message.audio; info.video = message.video; renderPeople(); }
        break;
      }
      case "chat":
        addChat(message);
        break;
      case "host_reconnecting":
        status("Le soignant se reconnecte… Merci de patienter.");
        break;
      case "host_returned":
        status("");
        break;
      case "ice_restart":
        // They resumed on a new socket and will send a fresh offer: nothing to do here.
        break;
      case "consent_state":
        if (state.me && message.participant_id === state.me.participant_id) {
          state.recordingConsent = message.recording ? message.recording.granted : null;
          $("recording-withdraw").hidden = state.recordingConsent !== true;
        }
        break;
      case "recording_state":
        renderRecording(message);
        break;
      case "turn_credentials":
        state.rtc = message.rtcConfiguration;
        for (const { pc } of state.peers.values()) pc.setConfiguration(state.rtc);
        scheduleTurnRefresh(message.expires_at);
        break;
      case "removed":
        finish("Consultation quittée", "Un professionnel vous a retiré(e) de la consultation.");
        break;
      case "ended":
        finish("Consultation terminée", "La consultation est terminée. Merci, vous pouvez fermer cette page.");
        break;
      case "error":
        handleError(message);
        break;
      default:
        break;
    }
  }

  function handleError(error) {
    const text = error.human || "Une action n'a pas pu aboutir.";
    if (error.code === "resume_failed") {
      state.resumeToken = null;
      send({ type: "join" });
      return;
    }
    if (["token_revoked", "token_expired", "token_forged", "token_malformed", "token_invalid",
         "token_wrong_consultation"].includes(error.code)) {
      sessionStorage.removeItem(`relais-consultation-${consultationId}`);
      finish("Lien non valable", text === "Une action n'a pas pu aboutir." ?
        "Ce lien de consultation n'est plus valable. Demandez un nouveau lien au soignant." : text);
      return;
    }
    if (error.code === "consultation_ended") {
      finish("Consultation terminée", "Cette consultation est terminée.");
      return;
    }
    if (error.code === "session_expired" || error.code === "forbidden") {
      finish("Accès impossible", error.human || "Vous ne participez pas à cette consultation.");
      return;
    }
    status(text);
  }

  function sendVideoConsent() {
    const granted = $("consent-video").checked;
    send({ type: "consent", kind: "video", granted });
    if (!granted) send({ type: "media_state", audio: true, video: false });
  }

  // --- The call ----------------------------------------------------------------------------

  async function enterCall(message, resumed) {
    state.permissions = message.permissions;
    state.rtc = message.rtcConfiguration;
    scheduleTurnRefresh(message.turn_expires_at);
    const professional = state.permissions.includes("admit");
    $("waiting-panel").hidden = !professional;
    $("end").hidden = !state.permissions.includes("end");
    // Only offered when this server runs a recorder (the permission says so).
    $("record").hidden = !state.permissions.includes("record");
    $("recordings-panel").hidden = !state.permissions.includes("record") || state.guest;
    if (resumed) stopRecorder();  // a new socket: the recorder gets a fresh connection
    state.people.clear();
    for (const info of message.participants) state.people.set(info.participant_id, info);
    renderPeople();
    renderRecording({ requested: false, active: message.recording, missing_consent: [] });
    show("call-step");
    // Mesh rule: whoever arrives (or comes back) offers to everyone already there; after a
    // resume the offer restarts ICE on the existing connections (RFC 8445 §9).
    for (const info of message.participants) {
      if (!info.connected) continue;
      await makeOffer(info.participant_id, resumed);
    }
  }

  function peerFor(id) {
    let peer = state.peers.get(id);
    if (peer) return peer;
    const pc = new RTCPeerConnection(state.rtc);
    for (const track of state.stream.getTracks()) pc.addTrack(track, state.stream);
    const tile = document.createElement("figure");
    tile.className = "tile remote";
    tile.dataset.participant = id;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    tile.append(video, caption);
    $("tiles").append(tile);
    pc.addEventListener("track", (event) => {
      video.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    pc.addEventListener("icecandidate", (event) => {
      if (!event.candidate) return;
      const c = event.candidate.toJSON();
      send({ type: "candidate", to: id, candidate: c.candidate, sdpMid: c.sdpMid,
             sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment });
    });
    peer = { pc, tile };
    state.peers.set(id, peer);
    renderPeople();
    return peer;
  }

  function dropPeer(id) {
    const peer = state.peers.get(id);
    if (!peer) return;
    peer.pc.close();
    peer.tile.remove();
    state.peers.delete(id);
  }

  async function makeOffer(id, iceRestart) {
    const { pc } = peerFor(id);
    const offer = await pc.createOffer({ iceRestart: Boolean(iceRestart) });
    await pc.setLocalDescription(offer);
    send({ type: "offer", to: id, sdp: pc.localDescription.sdp });
  }

  async function onOffer(message) {
    const { pc } = peerFor(message.from);
    await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    send({ type: "answer", to: message.from, sdp: pc.localDescription.sdp });
  }

  // --- The recording peer ------------------------------------------------------------------

  async function startRecorder() {
    const pc = new RTCPeerConnection(state.rtc);
    state.recorder = pc;
    for (const track of state.stream.getTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [state.stream] });
    }
    pc.addEventListener("icecandidate", (event) => {
      if (!event.candidate || state.recorder !== pc) return;
      const c = event.candidate.toJSON();
      send({ type: "candidate", to: RECORDER, candidate: c.candidate, sdpMid: c.sdpMid,
             sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment });
    });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (state.recorder === pc) send({ type: "offer", to: RECORDER, sdp: pc.localDescription.sdp });
  }

  function stopRecorder() {
    if (!state.recorder) return;
    state.recorder.close();
    state.recorder = null;
  }

  async function showRecordings() {
    const list = $("recordings-list");
    list.replaceChildren();
    const response = await fetch(`/api/consultations/${consultationId}/recordings`,
      { credentials: "same-origin" });
    if (!response.ok) {
      list.append(item("Les enregistrements n'ont pas pu être chargés."));
      return;
    }
    const { recordings } = await response.json();
    if (!recordings.length) list.append(item("Aucun enregistrement terminé pour l'instant."));
    for (const r of recordings) {
      const who = state.people.get(r.participant_id) ||
        (state.me && state.me.participant_id === r.participant_id ? state.me : null);
      const start = new Date(r.started_at).toLocaleTimeString("fr-FR",
        { hour: "2-digit", minute: "2-digit" });
      const li = item(`${start} — ${who ? who.display_name : "Participant"} — ` +
        `${Math.round(r.duration_seconds)} s `);
      const link = document.createElement("a");
      link.href = r.url;
      link.textContent = "Télécharger";
      li.append(link);
      list.append(li);
    }
  }

  function scheduleTurnRefresh(expiresAt) {
    clearTimeout(state.turnTimer);
    if (!expiresAt) return;
    // Ask for fresh TURN credentials at 80% of their lifetime (long calls).
    const delay = Math.max(5000, (expiresAt * 1000 - Date.now()) * 0.8);
    state.turnTimer = setTimeout(() => send({ type: "refresh_turn" }), delay);
  }

  function label(info) {
    return `${info.display_name} (${ROLES[info.role] || info.role})`;
  }

  function renderPeople() {
    const list = $("participants");
    list.replaceChildren();
    if (state.me) list.append(item(`${label(state.me)} — vous`));
    for (const info of state.people.values()) {
      const flags = [];
      if (info.audio === false) flags.push("micro coupé");
      if (info.video === false) flags.push("caméra coupée");
      if (info.connected === false) flags.push("se reconnecte");
      const li = item(flags.length ? `${label(info)} — ${flags.join(", ")}` : label(info));
      if (state.permissions.includes("remove")) {
        li.append(" ", button("Retirer", "remove secondary", () => {
          if (confirm(`Retirer ${info.display_name} de la consultation ?`)) {
            send({ type: "remove", participant_id: info.participant_id });
          }
        }));
      }
      list.append(li);
      const peer = state.peers.get(info.participant_id);
      if (peer) peer.tile.querySelector("figcaption").textContent = label(info);
    }
  }

  function renderWaiting(waiting) {
    const list = $("waiting-list");
    list.replaceChildren();
    if (!waiting.length) list.append(item("Personne n'attend."));
    for (const info of waiting) {
      const li = item(label(info));
      li.dataset.participant = info.participant_id;
      const admit = button("Admettre", "admit", () =>
        send({ type: "admit", participant_id: info.participant_id }));
      const remove = button("Retirer", "remove secondary", () =>
        send({ type: "remove", participant_id: info.participant_id }));
      li.append(" ", admit, " ", remove);
      list.append(li);
    }
  }

  function renderRecording(message) {
    state.recordingRequested = message.requested;
    $("record").textContent = message.requested ? "Arrêter l'enregistrement" : "Demander l'enregistrement";
    let text = "";
    if (message.active) {
      text = "● Enregistrement en cours (tous les participants ont accepté).";
      if (!state.recorder) startRecorder().catch((error) => console.error("recorder", error));
    } else {
      stopRecorder();
      if (message.requested) text = "Enregistrement demandé : en attente de l'accord de tous.";
    }
    $("recording-state").textContent = text;
    $("recording-consent").hidden = !(message.requested && state.recordingConsent !== true &&
      state.recordingConsent !== false);
  }

  function addChat(message) {
    const who = message.from === (state.me && state.me.participant_id) ? "Vous" :
      (state.people.get(message.from) ? state.people.get(message.from).display_name : "Participant");
    const time = new Date(message.at * 1000).toLocaleTimeString("fr-FR", { hour: "2-digit", minute: "2-digit" });
    const li = item(`${time} ${who} : ${message.text}`);
    $("chat-log").append(li);
    li.scrollIntoView({ block: "nearest" });
  }

  function item(text) {
    const li = document.createElement("li");
    li.textContent = text;  // never interpret names or messages as HTML
    return li;
  }

  function button(text, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }

  // --- Controls ----------------------------------------------------------------------------

  function toggle(kind, buttonId, onText, offText) {
    const tracks = kind === "audio" ? state.stream.getAudioTracks() : state.stream.getVideoTracks();
    const enabled = !(tracks[0] && tracks[0].enabled);
    for (const track of tracks) track.enabled = enabled;
    const b = $(buttonId);
    b.textContent = enabled ? onText : offText;
    b.setAttribute("aria-pressed", String(!enabled));
    const audio = state.stream.getAudioTracks().some((t) => t.enabled);
    const video = state.stream.getVideoTracks().some((t) => t.enabled);
    send({ type: "media_state", audio, video });
  }

  $("mute").addEventListener("click", () =>
    toggle("audio", "mute", "Couper le micro", "Rétablir le micro"));
  $("camera").addEventListener("click", () =>
    toggle("video", "camera", "Couper la caméra", "Rétablir la caméra"));
  $("leave").addEventListener("click", () => {
    send({ type: "leave" });
    finish("Vous avez quitté la consultation", "Vous pouvez fermer cette page.");
  });
  $("leave-waiting").addEventListener("click", () => {
    send({ type: "leave" });
    finish("Vous avez quitté la salle d'attente", "Vous pouvez fermer cette page.");
  });
  $("end").addEventListener("click", () => {
    if (confirm("Terminer la consultation pour tous les participants ?")) send({ type: "end" });
  });
  $("record").addEventListener("click", () =>
    send({ type: "record", enabled: !state.recordingRequested }));
  $("recording-yes").addEventListener("click", () => {
    $("recording-consent").hidden = true;
    send({ type: "consent", kind: "recording", granted: true });
  });
  $("recording-no").addEventListener("click", () => {
    $("recording-consent").hidden = true;
    send({ type: "consent", kind: "recording", granted: false });
  });
  $("recording-withdraw").addEventListener("click", () =>
    send({ type: "consent", kind: "recording", granted: false }));
  $("recordings-show").addEventListener("click", () =>
    showRecordings().catch((error) => console.error("recordings", error)));
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (text) send({ type: "chat", text });
    input.value = "";
  });

  // For automated checks (and support): bytes of remote video received so far.
  window.relaisConsultation = {
    async inboundVideoBytes() {
      const totals = {};
      for (const [id, { pc }] of state.peers) {
        totals[id] = 0;
        const report = await pc.getStats();
        report.forEach((s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") totals[id] += s.bytesReceived || 0;
        });
      }
      return totals;
    },
    participantId: () => (state.me ? state.me.participant_id : null),
    recorderState: () => (state.recorder ? state.recorder.connectionState : null),
  };

  start().catch((error) => {
    console.error(error);
    finish("Erreur", "La page n'a pas pu démarrer. Rechargez-la.");
  });
})();
