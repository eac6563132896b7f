"""Text-level clean-up shared by every corpus step: Unicode/whitespace normalisation, boilerplate lines, PII,
and the one word split that every quality rule reads (so a document is tokenised once, not once per rule)."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline; NUL included. Zero-width and BOM characters too.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")  # keep NBSP's role, not its byte
_BLANKS = re.compile(r"\n{3,}")

_BOILERPLATE = re.compile(
    r"(?i)^\W*(?:"
    r"(?:ce|notre) site (?:web )?utilise des cookies|en poursuivant votre navigation|accepter (?:les|tous les) cookies"
    r"|lire la suite|partager sur (?:facebook|twitter|linkedin)|abonnez-vous à notre newsletter"
    r"|(?:this|our) (?:web)?site uses cookies|by continuing to (?:browse|use)|accept (?:all )?cookies"
    r"|read more|share (?:on|this on) (?:facebook|twitter|linkedin)|subscribe to our newsletter"
    r"|javascript (?:is|must be) (?:disabled|enabled)|activez javascript"
    r")\b.*$"
)
_COPYRIGHT = re.compile(r"(?i)tous droits réservés|all rights reserved")  # anywhere in a short line


def encodable(text: str) -> bool:
    """False for text holding lone surrogates (JSON `\\ud83d` escapes decode to them), which no writer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize(text: str) -> str:
    """NFC, no control characters, one space between words, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def strip_boilerplate(text: str) -> tuple[str, int]:
    """Drop cookie-banner, copyright and share-button lines (French and English); return text and lines removed."""
    lines = text.split("\n")
    kept = [line for line in lines
            if not (len(line) < 200 and (_BOILERPLATE.match(line) or _COPYRIGHT.search(line)))]
    return "\n".join(kept), len(lines) - len(kept)


# PII: each pattern is replaced by a typed placeholder, counted per kind; phones before IPv4, whose dotted
# form (04.72.77.69.69) would otherwise lose its tail to an IP match.
_PII = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    # French: 0X XX XX XX XX (spaces, dots or dashes) and +33 (0)X…; international: +CC then 6-14 digits in groups
    "phone": re.compile(r"(?<![\w+])(?:(?:\+|00)33 ?\(?0?\)? ?[1-9]|0[1-9])(?:[ .-]?\d{2}){4}(?!\d)"
                        r"|(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)"),
    "ipv6": re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])"
                       r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}(?::[0-9a-fA-F]{1,4}){1,6}(?![\w:])"),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"),
}
PLACEHOLDERS = {"email": "<EMAIL>", "iban": "<IBAN>", "ipv6": "<IP>", "ipv4": "<IP>", "phone": "<PHONE>"}


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mails, IBANs, IP addresses and phone numbers; return text and counts per kind."""
    counts: dict[str, int] = {}
    for kind, pattern in _PII.items():
        if kind == "ipv6" and "::" not in text and text.count(":") < 7:
            continue  # cheap skip: most documents cannot hold an IPv6 address
        text, n = pattern.subn(PLACEHOLDERS[kind], text)
        if n:
            counts[kind] = n
    return text, counts


# Words: letters/digits with inner hyphens, a French elision kept on its article (l’, d’, qu’);
# every other non-space character is its own punctuation token.
_TOKEN = re.compile(r"\w+(?:-\w+)*['’]?|[^\w\s]")

_FR_STOP = """le la les l' l’ un une des du de d' d’ et ou mais donc car ni que qu' qu’ qui quoi dont où
        ce cet cette ces c' c’ il elle ils elles on nous vous je j' j’ tu me m' m’ te t' t’ se s' s’ lui leur
        est sont était être a ont avait avoir fait pas ne n' n’ plus en dans par pour sur avec sans sous
        au aux son sa ses mon ma mes ton ta tes notre nos votre vos y comme tout tous aussi bien très"""
_EN_STOP = """the be to of and a in that have i it for not on with he as you do at this but his by from
        they we say her she or an will my one all would there their what so up out if about who get which go me
        is are was were has had been its our your"""
STOP_WORDS = {"fr": frozenset(_FR_STOP.split()), "en": frozenset(_EN_STOP.split())}


def words(text: str) -> list[str]:
    """Word and punctuation tokens of `text` (see `_TOKEN`); cheap enough to run once per document."""
    return _TOKEN.findall(text)
