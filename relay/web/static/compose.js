"use strict";
// A new thread: recipients, subject, optional patient (INS), text, attachments.
const { api, me, uploadFiles } = Relais;

document.getElementById("compose-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("status");
  const button = document.getElementById("send");
  button.disabled = true;
  try {
    const attachments = await uploadFiles(document.getElementById("files"), status);
    const recipients = document.getElementById("recipients").value
      .split(/[,;\s]+/).map((a) => a.trim()).filter(Boolean);
    const created = await api("/api/threads", {
      json: {
        recipients,
        subject: document.getElementById("subject").value,
        patient_ins: document.getElementById("patient").value,
        text: document.getElementById("text").value,
        attachments,
      },
    });
    window.location.assign(`/messagerie/${encodeURIComponent(created.id)}`);
  } catch (error) {
    status.textContent = error.message;
    status.className = "error";
    status.hidden = false;
    button.disabled = false;
  }
});

me().catch(() => {});
