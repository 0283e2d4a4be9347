"""Reply extraction on replies formatted the way real clients format them."""

from __future__ import annotations

import pytest

from relay.mail.quoting import extract_reply, html_to_text, unflow

ANSWER = "Bonjour,\n\nPansement hydrocolloïde, à revoir dans 8 jours.\n\nCordialement,\nDr Dubois"

GMAIL_FR = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

Le lun. 23 nov. 2026 à 14:05, Claire Martin <claire.martin@relais.localhost> a
écrit :

> Bonjour Docteur,
> Voici la photo de la plaie.
>
"""

GMAIL_EN_WRAPPED = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

On Mon, Nov 23, 2026 at 2:05 PM Claire Martin via Relais Santé <
notifications@relais.localhost> wrote:

> Claire Martin vous a adressé un nouveau message sécurisé.
"""

OUTLOOK_FR = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

________________________________
De : Claire Martin via Relais Santé <notifications@relais.localhost>
Envoyé : lundi 23 novembre 2026 14:05
À : Dubois Jean <jean.dubois@chu.example.fr>
Objet : [Relais Santé] Nouvelle demande de télé-expertise

Claire Martin vous a adressé une nouvelle demande de télé-expertise.
"""

OUTLOOK_DESKTOP_EN = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

-----Original Message-----
From: Claire Martin <claire.martin@relais.localhost>
Sent: Monday, November 23, 2026 2:05 PM
To: Dubois Jean <jean.dubois@chu.example.fr>
Subject: RE: demande
"""

OUTLOOK_MAC_FR = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

De : Claire Martin <claire.martin@relais.localhost>
Date : lundi 23 novembre 2026 à 14:05
À : Jean Dubois <jean.dubois@chu.example.fr>
Objet : Re: demande

Texte d'origine
"""

OUTLOOK_BOLD_FROM_HTML_CONVERSION = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

*De :* Claire Martin <claire.martin@relais.localhost>
*Envoyé :* lundi 23 novembre 2026 14:05
*À :* Jean Dubois
*Objet :* demande
"""

THUNDERBIRD_FR = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

Le 23/11/2026 à 14:05, Claire Martin a écrit :
> Bonjour Docteur,
>
> Voici la photo.
"""

THUNDERBIRD_FORWARD = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

-------- Message d'origine --------
Sujet : demande
Date : Mon, 23 Nov 2026 14:05:00 +0100
De : Claire Martin <claire.martin@relais.localhost>
"""

APPLE_IPHONE_FR = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

Envoyé de mon iPhone

> Le 23 nov. 2026 à 14:05, Claire Martin <claire.martin@relais.localhost> a écrit :
>
> Bonjour Docteur,
"""

APPLE_MAIL_FR_NBSP = (
    "Bonjour,\n\nPansement hydrocolloïde, à revoir dans 8 jours.\n\nCordialement,\nDr Dubois\n"
    "\n\nLe 23 nov. 2026 à 14:05, Claire Martin <claire.martin@relais.localhost> a écrit\u00a0:"
    "\n\n> Bonjour Docteur,\n"
)

# The RFC 3676 delimiter is "-- " with its trailing space: spelled out so no editor strips it.
SIGNATURE_DELIMITER = (
    "Bonjour,\n\nPansement hydrocolloïde, à revoir dans 8 jours.\n\nCordialement,\nDr Dubois\n"
    "-- \nDr Jean Dubois\nDermatologie — CHU\nTél. 01 23 45 67 89\n"
)

ANDROID_SIGNATURE = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

Envoyé depuis mon smartphone Samsung Galaxy.
"""

OUTLOOK_MOBILE = """Bonjour,

Pansement hydrocolloïde, à revoir dans 8 jours.

Cordialement,
Dr Dubois

Obtenir Outlook pour Android
________________________________
From: Claire Martin <claire.martin@relais.localhost>
Sent: Monday, November 23, 2026 2:05:00 PM
To: jean.dubois@chu.example.fr
Subject: demande
"""

CRLF_SENT_FROM = (
    "Bonjour,\r\n\r\nPansement hydrocolloïde, à revoir dans 8 jours.\r\n\r\nCordialement,\r\n"
    "Dr Dubois\r\n\r\nSent from my iPad\r\n\r\nOn 23 Nov 2026, at 14:05, Claire Martin "
    "<claire.martin@relais.localhost> wrote:\r\n\r\n> Bonjour\r\n"
)


@pytest.mark.parametrize(
    "reply",
    [
        GMAIL_FR,
        GMAIL_EN_WRAPPED,
        OUTLOOK_FR,
        OUTLOOK_DESKTOP_EN,
        OUTLOOK_MAC_FR,
        OUTLOOK_BOLD_FROM_HTML_CONVERSION,
        THUNDERBIRD_FR,
        THUNDERBIRD_FORWARD,
        APPLE_IPHONE_FR,
        APPLE_MAIL_FR_NBSP,
        SIGNATURE_DELIMITER,
        ANDROID_SIGNATURE,
        OUTLOOK_MOBILE,
        CRLF_SENT_FROM,
    ],
    ids=[
        "gmail-fr",
        "gmail-en-wrapped",
        "outlook-fr",
        "outlook-desktop-en",
        "outlook-mac-fr",
        "outlook-bold",
        "thunderbird-fr",
        "thunderbird-forward",
        "iphone-fr",
        "apple-mail-nbsp",
        "signature-delimiter",
        "android-signature",
        "outlook-mobile",
        "crlf-ipad",
    ],
)
def test_client_formats(reply: str) -> None:
    assert extract_reply(reply) == ANSWER


def test_interleaved_answers_kept_quotes_dropped() -> None:
    reply = """Le 23/11/2026 à 14:05, Claire Martin a écrit :
"""
    # An attribution at the top means everything is history (nothing new): empty answer.
    assert extract_reply(reply) == ""
    inline = """> Faut-il changer le pansement ?
Oui, tous les deux jours.
> Antibiotiques ?
Non, pas à ce stade.
"""
    assert extract_reply(inline) == "Oui, tous les deux jours.\nNon, pas à ce stade."


def test_sentences_that_look_like_attributions_are_kept() -> None:
    text = "Le patient a écrit :\nqu'il avait mal.\n\nOn verra ce qu'il a écrit : rien."
    assert extract_reply(text) == text


def test_a_from_line_alone_is_not_a_header_block() -> None:
    text = "De : mon point de vue, la plaie s'améliore.\nÀ revoir."
    assert extract_reply(text) == text


def test_last_signature_delimiter_wins() -> None:
    text = "Partie 1\n--\nPartie 2\n-- \nSignature"
    assert extract_reply(text) == "Partie 1\n--\nPartie 2"


def test_mobile_line_in_the_middle_is_kept() -> None:
    text = "Sent from my phone earlier, the photo was blurry.\nPlease resend."
    assert extract_reply(text) == text


def test_html_to_text_blocks_entities_and_scripts() -> None:
    html = (
        "<html><head><title>t</title><style>.x{}</style></head><body>"
        "<script>document.write('x')</script>"
        "<p>Pansement &amp; soins</p><ul><li>un</li><li>deux</li></ul>"
        "<table><tr><td>a</td><td>b</td></tr></table>Fin<br>ligne</body></html>"
    )
    assert html_to_text(html) == "Pansement & soins\n\n- un\n- deux\n\na b\n\nFin\nligne"


def test_html_reply_from_gmail_loses_its_quote() -> None:
    html = (
        '<div dir="ltr">Pansement hydrocolloïde.<br></div><br>'
        '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">Le lun. 23 nov. 2026 à '
        "14:05, Claire Martin &lt;claire.martin@relais.localhost&gt; a écrit&nbsp;:<br></div>"
        '<blockquote class="gmail_quote"><div>Question <b>initiale</b></div></blockquote></div>'
    )
    text = html_to_text(html)
    assert "> Question initiale" in text
    assert extract_reply(text) == "Pansement hydrocolloïde."


def test_html_reply_from_outlook_loses_its_header_block() -> None:
    html = (
        "<div>Pansement hydrocolloïde.</div><hr>"
        '<div id="divRplyFwdMsg"><b>De :</b> Claire Martin<br><b>Envoyé :</b> lundi 23 '
        "novembre 2026 14:05<br><b>À :</b> Jean Dubois<br><b>Objet :</b> demande</div>"
        "<div>Question initiale</div>"
    )
    assert extract_reply(html_to_text(html)) == "Pansement hydrocolloïde."


def test_html_pre_keeps_lines() -> None:
    assert html_to_text("<pre>a  b\nc</pre>") == "a  b\nc"


def test_html_output_is_inert_text() -> None:
    text = html_to_text("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p><img src=x onerror=y>")
    assert text == "<script>alert(1)</script>"  # text, never markup that gets re-parsed


def test_unflow_joins_soft_breaks() -> None:
    flowed = "Bonjour, la plaie \névolue bien.\n\n> cit\u00e9 \n> suite\n-- \nsig"
    assert unflow(flowed) == "Bonjour, la plaie évolue bien.\n\n> cité suite\n-- \nsig"


def test_unflow_delsp_and_space_stuffing() -> None:
    assert unflow("mot coup\u00e9 \nen deux", delsp=True) == "mot coupéen deux"
    assert unflow(" From here") == "From here"
