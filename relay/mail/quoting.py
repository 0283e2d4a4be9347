"""Text of a reply without the quoted history and the signature; HTML and flowed text to plain.

A specialist answering from a mail client sends their answer on top of (or between the lines
of) the whole previous mail. The thread already has that history, so only the new text is
kept. Clients mark history in a handful of ways, all recognised here:

* an attribution line: Gmail/Apple Mail/Thunderbird ``On <date>, <name> wrote:`` and the French
  ``Le <date>, <name> a écrit :`` (Gmail wraps it over two or three lines when long);
* a separator: ``-----Original Message-----``, ``-----Message d'origine-----`` (Outlook),
  ``-------- Message d'origine --------`` / ``-------- Original Message --------``
  (Thunderbird), ``---------- Forwarded message ---------`` (Gmail), ``Begin forwarded
  message:`` / ``Début du message réexpédié :`` (Apple Mail);
* an Outlook header block ``De : … / Envoyé : … / À : … / Objet : …`` (or ``From:/Sent:/To:``),
  often after a line of underscores;
* quoted lines starting with ``>``, dropped wherever they are (interleaved answers stay).

The signature goes too: everything after the RFC 3676 §4.3 delimiter ``-- `` (or a bare ``--``,
as many clients strip trailing spaces) and trailing mobile lines such as ``Envoyé de mon
iPhone`` or ``Sent from my Galaxy``.

Attribution lines are only taken as such when they contain a digit (every client puts the date
in them), so "Le patient a écrit :" in an answer is not mistaken for one.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["extract_reply", "html_to_text", "unflow"]

_FLAGS = re.IGNORECASE

_SEPARATOR = re.compile(
    r"-{2,}\s*(?:original message|message d'origine|message d’origine|forwarded message"
    r"|message transf[ée]r[ée]|reply message)\s*-{2,}"
    r"|begin forwarded message\s*:|d[ée]but du message r[ée]exp[ée]di[ée]\s*:",
    _FLAGS,
)
_ATTRIBUTION = re.compile(
    r"(?:on\s.{0,300}\swrote\s*:|le\s.{0,300}\sa\s+[ée]crit\s*:)",
    _FLAGS | re.DOTALL,
)
_HEADER_FROM = re.compile(r"\*?(?:from|de)\s*:\*?\s*\S", _FLAGS)
_HEADER_DATE = re.compile(r"\*?(?:sent|envoy[ée]|date)\s*:", _FLAGS)
_HEADER_OTHER = re.compile(r"\*?(?:to|à|a|subject|objet|cc)\s*:", _FLAGS)
_UNDERSCORES = re.compile(r"_{8,}")
_QUOTED = re.compile(r"\s*>")
_MOBILE_SIGNATURE = re.compile(
    r"(?:envoy[ée]|envoye)\s+(?:de|depuis|à partir de|a partir de|avec)\s+\S.*"
    r"|sent\s+(?:from|via|with)\s+\S.*"
    r"|(?:get|obtenir|t[ée]l[ée]charger)\s+outlook\s+(?:for|pour)\s+\S.*",
    _FLAGS,
)
_MAX_MOBILE_SIGNATURE = 80
_ATTRIBUTION_LINES = 3


def extract_reply(text: str) -> str:
    """The new text of a reply: history from the first attribution/separator/header block on
    is cut, ``>`` lines dropped, the signature removed, outer blank lines stripped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = lines[: _history_start(lines)]
    lines = [line for line in lines if not _QUOTED.match(line)]
    lines = _without_signature(lines)
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _history_start(lines: list[str]) -> int:
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if _SEPARATOR.fullmatch(stripped):
            return index
        if _is_attribution(lines, index):
            return index
        if _HEADER_FROM.match(stripped) and _is_header_block(lines, index):
            return _before_underscores(lines, index)
    return len(lines)


def _is_attribution(lines: list[str], index: int) -> bool:
    first = lines[index].strip()
    if not re.match(r"(?:on|le)\s", first, _FLAGS):
        return False
    joined = first
    for extra in range(_ATTRIBUTION_LINES):
        if extra:
            if index + extra >= len(lines) or not lines[index + extra].strip():
                return False
            joined = f"{joined} {lines[index + extra].strip()}"
        if _ATTRIBUTION.fullmatch(joined):
            return any(char.isdigit() for char in joined)
    return False


def _is_header_block(lines: list[str], index: int) -> bool:
    """An Outlook-style block: From/De then, within 5 lines, Sent/Date and To/Subject."""
    following = [line.strip() for line in lines[index + 1 : index + 6]]
    has_date = any(_HEADER_DATE.match(line) for line in following)
    has_other = any(_HEADER_OTHER.match(line) for line in following)
    return has_date and has_other


def _before_underscores(lines: list[str], index: int) -> int:
    previous = index - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    if previous >= 0 and _UNDERSCORES.fullmatch(lines[previous].strip()):
        return previous
    return index


def _without_signature(lines: list[str]) -> list[str]:
    delimiters = [i for i, line in enumerate(lines) if line == "-- "]
    if not delimiters:
        delimiters = [i for i, line in enumerate(lines) if line.rstrip() == "--"]
    if delimiters:
        lines = lines[: delimiters[-1]]
    end = len(lines)
    while end:
        last = lines[end - 1].strip()
        if not last or (len(last) <= _MAX_MOBILE_SIGNATURE and _MOBILE_SIGNATURE.fullmatch(last)):
            end -= 1
            continue
        break
    return lines[:end]


def unflow(text: str, *, delsp: bool = False) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines, remove space-stuffing.

    A line ending in a space is "flowed" into the next line of the same quote depth (§4.2);
    with DelSp=yes that space is deleted (§4.2). The signature delimiter ``-- `` is never
    flowed (§4.3). Quote depth is written back as ``>`` prefixes.
    """
    out: list[str] = []
    paragraph: list[str] = []
    paragraph_depth = -1
    open_paragraph = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        depth = len(raw) - len(raw.lstrip(">"))
        content = raw[depth:]
        if content.startswith(" "):  # space-stuffing (§4.4)
            content = content[1:]
        soft = content.endswith(" ") and content != "-- "
        if delsp and soft:
            content = content[:-1]
        if open_paragraph and depth == paragraph_depth:
            paragraph.append(content)
        else:
            if open_paragraph:
                out.append(_quoted(paragraph_depth, "".join(paragraph)))
            paragraph, paragraph_depth = [content], depth
        open_paragraph = soft
        if not soft:
            out.append(_quoted(paragraph_depth, "".join(paragraph)))
            paragraph = []
    if open_paragraph:
        out.append(_quoted(paragraph_depth, "".join(paragraph)))
    return "\n".join(out)


def _quoted(depth: int, content: str) -> str:
    return f"{'>' * depth} {content}" if depth else content


_SKIPPED = frozenset({"script", "style", "head", "title", "template", "noscript", "svg"})
# Blocks that end a paragraph (blank line after) and those that only end a line.
_PARAGRAPHS = frozenset(
    {
        "address", "article", "blockquote", "dl", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "ol", "p", "pre", "section", "table", "ul",
    }
)  # fmt: skip
_LINES = frozenset({"br", "dd", "div", "dt", "li", "tr"})


class _TextExtractor(HTMLParser):
    """Collects the visible text; never re-emits markup, so the output is inert text.

    Linear in the input: the current line is a list of chunks plus a flag, never a string
    that is re-read or re-copied for every tag (quadratic on a body of 200,000 ``<b>``).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.chunks: list[str] = []
        self.has_text = False
        self.quote_depth = 0
        self.line_depth = 0
        self.skipping = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
            return
        if tag in _PARAGRAPHS or tag in _LINES:
            self.newline(paragraph=tag in _PARAGRAPHS)
        if tag == "blockquote":
            self.quote_depth += 1
        elif tag == "li":
            self.write("- ")
        elif tag == "pre":
            self.pre += 1
        elif tag in ("td", "th") and self.has_text:
            self.write(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _PARAGRAPHS or tag in _LINES:
            self.newline(paragraph=tag in _PARAGRAPHS)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
            return
        if tag in _PARAGRAPHS or tag in _LINES:
            self.newline(paragraph=tag in _PARAGRAPHS)
        if tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.pre:
            for number, chunk in enumerate(data.split("\n")):
                if number:
                    self.newline(force=True)
                self.write(chunk)
            return
        text = re.sub(r"\s+", " ", data)
        if not self.has_text:
            text = text.lstrip()
        self.write(text)

    def write(self, text: str) -> None:
        if not text:
            return
        if not self.chunks:
            self.line_depth = self.quote_depth
        self.chunks.append(text)
        self.has_text = self.has_text or not text.isspace()

    def newline(self, *, paragraph: bool = False, force: bool = False) -> None:
        if self.has_text or force:
            prefix = "> " * self.line_depth if self.line_depth else ""
            self.lines.append(prefix + "".join(self.chunks).rstrip())
        self.chunks = []
        self.has_text = False
        if paragraph and self.lines and self.lines[-1] != "":
            self.lines.append("")


def html_to_text(html: str) -> str:
    """Visible text of an HTML body: scripts/styles dropped, entities decoded, blocks as lines,
    ``<blockquote>`` content prefixed with ``>`` so that :func:`extract_reply` drops it."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    parser.newline()
    text = "\n".join(parser.lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
