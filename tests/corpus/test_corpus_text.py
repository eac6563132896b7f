"""Normalisation, boilerplate, PII and the shared word split, on French and English text."""

from __future__ import annotations

import pytest

from fournil.corpus.text import normalize, scrub_pii, strip_boilerplate, words


def test_normalize_nfc_controls_spaces():
    text = "Cafe\u0301\x00 au\u00a0\u00a0lait\x07  \r\n\r\n\r\n\tfin \u200b"
    assert normalize(text) == "Café au lait\n\nfin"


def test_normalize_keeps_newlines_and_accents():
    assert normalize("« Bonjour »\nl’été") == "« Bonjour »\nl’été"


@pytest.mark.parametrize("line", [
    "Ce site utilise des cookies pour améliorer votre expérience.",
    "© 2024 Exemple SA. Tous droits réservés.",
    "Lire la suite",
    "This website uses cookies to ensure you get the best experience.",
    "All rights reserved.",
    "Subscribe to our newsletter",
])
def test_boilerplate_lines_removed(line):
    text, removed = strip_boilerplate(f"Une vraie phrase.\n{line}\nAnother real sentence.")
    assert removed == 1
    assert text == "Une vraie phrase.\nAnother real sentence."


def test_boilerplate_keeps_prose_that_mentions_cookies():
    text = "Les cookies de ma grand-mère sont délicieux.\nWe read more books in winter."
    assert strip_boilerplate(text) == (text, 0)


@pytest.mark.parametrize("text,kind", [
    ("écrivez à jean.dupont@exemple.fr demain", "email"),
    ("contact: J.Smith+news@mail.example.co.uk", "email"),
    ("appelez le 06 12 34 56 78", "phone"),
    ("standard : 04.72.77.69.69", "phone"),
    ("tél. 01-23-45-67-89", "phone"),
    ("depuis l’étranger : +33 1 23 45 67 89", "phone"),
    ("+33 (0)6 12 34 56 78", "phone"),
    ("call +1 415 555 2671 today", "phone"),
    ("London: +44 20 7946 0958", "phone"),
    ("server at 192.168.1.10 is down", "ipv4"),
    ("address 2001:db8::1 answers", "ipv6"),
    ("link-local fe80:0:0:0:200:f8ff:fe21:67cf here", "ipv6"),
    ("IBAN FR76 3000 6000 0112 3456 7890 189 merci", "iban"),
    ("IBAN DE89370400440532013000 thanks", "iban"),
])
def test_pii_is_replaced(text, kind):
    scrubbed, counts = scrub_pii(text)
    assert counts.get(kind) == 1, (scrubbed, counts)
    assert "<" in scrubbed


@pytest.mark.parametrize("text", [
    "En 2023, au 75011 Paris.",
    "SIRET 123 456 789 00012",
    "ISBN 978-2-07-036822-8",
    "version 3.11.2 du 12/03/2024 à 14:30:00",
    "Il a couru 10 000 mètres en 1987 et 1988.",
    "ratio 1:2:3 and time 12:45",
])
def test_pii_leaves_numbers_alone(text):
    assert scrub_pii(text) == (text, {})


def test_words_french_elision_and_guillemets():
    assert words("« L’homme d'affaires », dit-il.") == ["«", "L’", "homme", "d'", "affaires", "»", ",", "dit-il", "."]
