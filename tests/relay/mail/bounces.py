"""Delivery reports in the shapes real MTAs send (Postfix, Exim, Exchange), for a given
original Message-ID and recipient; the layouts follow each MTA's own output."""

from __future__ import annotations


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def postfix(
    message_id: str,
    recipient: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str | None = None,
    returned: str = "text/rfc822-headers",
    original_to: str | None = None,
    bounce_to: str = "postmaster@relais.localhost",
) -> bytes:
    """Postfix bounce(8): notification, delivery report, undelivered headers (or message)."""
    diagnostic = diagnostic or (
        f"smtp; 550 5.1.1 <{recipient}>: Recipient address rejected:\n"
        "    User unknown in virtual mailbox table"
    )
    subject = (
        "Undelivered Mail Returned to Sender"
        if action == "failed"
        else "Delayed Mail (still being retried)"
    )
    returned_body = (
        f"Return-Path: <{bounce_to}>\n"
        "Received: from relais.localhost (relais.localhost [192.0.2.10])\n"
        "\tby smtp.cabinet.example (Postfix) with ESMTPS id 8A1B2C3D4E\n"
        "\tfor <{to}>; Mon, 23 Nov 2026 18:00:00 +0100 (CET)\n"
        "From: =?utf-8?q?Infirmi=C3=A8re_via_Relais_Sant=C3=A9?= <notifications@relais.localhost>\n"
        "To: {to}\n"
        "Subject: =?utf-8?q?=5BRelais_Sant=C3=A9=5D_Nouveau_message_s=C3=A9curis=C3=A9?=\n"
        f"Message-ID: {message_id}\n"
        "Date: Mon, 23 Nov 2026 17:00:00 +0000\n"
        "MIME-Version: 1.0\n"
    ).format(to=original_to or recipient)
    if returned == "message/rfc822":
        returned_body += (
            "Content-Type: text/plain; charset=utf-8\n\nVous avez un nouveau message.\n"
        )
    original = f"Original-Recipient: rfc822;{original_to or recipient}\n"
    return _crlf(
        "Return-Path: <>\n"
        "Received: by smtp.cabinet.example (Postfix)\n"
        "\tid 0F1E2D3C4B; Mon, 23 Nov 2026 18:00:01 +0100 (CET)\n"
        "Date: Mon, 23 Nov 2026 18:00:01 +0100 (CET)\n"
        "From: MAILER-DAEMON@smtp.cabinet.example (Mail Delivery System)\n"
        f"Subject: {subject}\n"
        f"To: {bounce_to}\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        '\tboundary="0F1E2D3C4B.1795460401/smtp.cabinet.example"\n'
        "Content-Transfer-Encoding: 8bit\n"
        "Message-Id: <20261123170001.0F1E2D3C4B@smtp.cabinet.example>\n"
        "\n"
        "This is a MIME-encapsulated message.\n"
        "\n"
        "--0F1E2D3C4B.1795460401/smtp.cabinet.example\n"
        "Content-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "This is the mail system at host smtp.cabinet.example.\n"
        "\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n"
        "\n"
        f"<{recipient}>: host mx.cabinet.example[192.0.2.25] said: 550 5.1.1\n"
        "    User unknown (in reply to RCPT TO command)\n"
        "\n"
        "--0F1E2D3C4B.1795460401/smtp.cabinet.example\n"
        "Content-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; smtp.cabinet.example\n"
        "X-Postfix-Queue-ID: 0F1E2D3C4B\n"
        f"X-Postfix-Sender: rfc822; {bounce_to}\n"
        "Arrival-Date: Mon, 23 Nov 2026 17:00:00 +0100 (CET)\n"
        "\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        f"{original}"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mx.cabinet.example\n"
        f"Diagnostic-Code: {diagnostic}\n"
        "\n"
        "--0F1E2D3C4B.1795460401/smtp.cabinet.example\n"
        "Content-Description: Undelivered Message Headers\n"
        f"Content-Type: {returned}\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        f"{returned_body}"
        "\n"
        "--0F1E2D3C4B.1795460401/smtp.cabinet.example--\n"
    )


def exim(message_id: str, recipient: str) -> bytes:
    """Exim: Action first, Status always 5.0.0, the whole original as message/rfc822."""
    return _crlf(
        "From: Mail Delivery System <Mailer-Daemon@mail.hopital.example>\n"
        "To: postmaster@relais.localhost\n"
        "References: <root-thread@relais.localhost>\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        " boundary=1795460401-eximdsn-42\n"
        "MIME-Version: 1.0\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "Message-Id: <E1tAbCd-000123-Xy@mail.hopital.example>\n"
        "Date: Mon, 23 Nov 2026 18:00:02 +0100\n"
        "Auto-Submitted: auto-replied\n"
        "\n"
        "--1795460401-eximdsn-42\n"
        "Content-type: text/plain; charset=us-ascii\n"
        "\n"
        "This message was created automatically by mail delivery software.\n"
        "\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n"
        "\n"
        f"  {recipient}\n"
        "    host mx.hopital.example [192.0.2.30]\n"
        "    SMTP error from remote mail server after RCPT TO:<x>:\n"
        "    550 5.2.1 Mailbox disabled\n"
        "\n"
        "--1795460401-eximdsn-42\n"
        "Content-type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mail.hopital.example\n"
        "\n"
        "Action: failed\n"
        f"Final-Recipient: rfc822;{recipient}\n"
        "Status: 5.0.0\n"
        "Remote-MTA: dns; mx.hopital.example\n"
        "Diagnostic-Code: smtp; 550 5.2.1 Mailbox disabled\n"
        "\n"
        "--1795460401-eximdsn-42\n"
        "Content-type: message/rfc822\n"
        "\n"
        "Return-path: <postmaster@relais.localhost>\n"
        f"To: {recipient}\n"
        "Subject: notification\n"
        f"Message-ID: {message_id}\n"
        "\n"
        "Vous avez un nouveau message.\n"
        "\n"
        "--1795460401-eximdsn-42--\n"
    )


def exchange(message_id: str, recipient: str) -> bytes:
    """Exchange Online NDR: text and HTML alternative, a folded Diagnostic-Code, X-Display-Name,
    the original headers as text/rfc822-headers with a folded Message-ID."""
    return _crlf(
        "From: Microsoft Outlook <postmaster@chu.example>\n"
        "To: <postmaster@relais.localhost>\n"
        "Subject: Undeliverable: [Relais Sante] Nouveau message securise\n"
        "Date: Mon, 23 Nov 2026 17:00:03 +0000\n"
        "Message-ID: <a1b2c3d4-e5f6@PR3P193MB0000.EURP193.PROD.OUTLOOK.COM>\n"
        f"In-Reply-To: {message_id}\n"
        f"References: {message_id}\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type="delivery-status";\n'
        '\tboundary="_004_ndr_"\n'
        "\n"
        "--_004_ndr_\n"
        'Content-Type: multipart/alternative; boundary="_000_alt_"\n'
        "\n"
        "--_000_alt_\n"
        'Content-Type: text/plain; charset="us-ascii"\n'
        "\n"
        "Delivery has failed to these recipients or groups:\n"
        f"{recipient}\n"
        "The email address you entered couldn't be found.\n"
        "\n"
        "--_000_alt_\n"
        'Content-Type: text/html; charset="us-ascii"\n'
        "\n"
        "<html><body><p>Delivery has failed.</p></body></html>\n"
        "\n"
        "--_000_alt_--\n"
        "\n"
        "--_004_ndr_\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns;PR3P193MB0000.EURP193.PROD.OUTLOOK.COM\n"
        "Received-From-MTA: dns;smtp.relais.localhost\n"
        "Arrival-Date: Mon, 23 Nov 2026 17:00:01 +0000\n"
        "\n"
        f"Final-Recipient: rfc822;{recipient}\n"
        "Action: failed\n"
        "Status: 5.1.10\n"
        "Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not\n"
        " found by SMTP address lookup\n"
        "X-Display-Name: Secretariat\n"
        "\n"
        "--_004_ndr_\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        "From: Relais Sante <notifications@relais.localhost>\n"
        f"To: <{recipient}>\n"
        "Subject: [Relais Sante] Nouveau message securise\n"
        "Message-ID:\n"
        f" {message_id}\n"
        "\n"
        "--_004_ndr_--\n"
    )
