"""Optional PII redaction for exported feedback: e-mail addresses, phone numbers, street addresses, names.

``redact(text) -> Redaction(text, counts)`` replaces each finding with a placeholder — ``[EMAIL]``,
``[PHONE]``, ``[ADDRESS]``, ``[NAME]`` — and counts them by kind (the export's data card reports the counts).

What does the finding, and why not a bigger library:

* **Phone numbers**: ``phonenumbers`` (the maintained Python port of Google's libphonenumber; offline, its
  numbering-plan metadata ships in the wheel). Its matcher runs with the US and CN regions (the UI's two
  languages: national numbers of both, and any number written with a ``+`` country code).
* **E-mail addresses**: a regular expression (the address syntax is regular enough; no library needed).
* **Street addresses and names** need named-entity recognition to be found in general. The maintained
  libraries for that — Microsoft Presidio, scrubadub — delegate it to a spaCy (or Stanford) NER model that
  is downloaded separately from GitHub releases (not from PyPI; the PyPI copies are unofficial re-uploads),
  so they do not work offline on a fresh machine, and a 400 MB model is a heavy dependency for an export
  option. Instead this module finds the common *explicit* forms: a house number followed by a street name
  and a street-type word (``221B Baker Street``, ``1600 Pennsylvania Ave``), optionally followed by a city,
  state and ZIP; and names introduced as names — ``my name is …``, ``I'm …``/``I am …`` followed by a
  capitalised word that is not a common adjective, ``call me …``, honorifics (``Mr``/``Mrs``/``Ms``/``Dr``
  …), a sign-off (``Regards, …``), and the Chinese ``我叫…``/``我的名字是…``. Names mentioned without such a
  cue (``Ask John about it``) are NOT found: redaction lowers the risk, it does not remove it, and the data
  card says which method was used.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "address": "[ADDRESS]", "name": "[NAME]"}
PHONE_REGIONS = ("US", "CN")
METHOD = ("phonenumbers (libphonenumber) for phone numbers; regular expressions for e-mails, explicit street "
          "addresses and names introduced as names (rlhf_demo/pii.py); names without such a cue are not found")

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")

_STREET_TYPES = (r"street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|"
                 r"square|sq|parkway|pkwy|highway|hwy|circle|cir|crescent|close|gardens")
ADDRESS = re.compile(
    r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][A-Za-z'-]*\.?\s+){1,4}(?:" + _STREET_TYPES + r")\b\.?"
    r"(?:,?\s+(?:apt|apartment|suite|unit|#)\.?\s*\w+)?"
    r"(?:,\s*[A-Z][A-Za-z .'-]{1,40}?(?:,\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?(?=[\s,.;:!?)]|$))?",
    re.IGNORECASE)
# the street-type word matches case-insensitively, the street name must be capitalised: checked below

_NAME = r"[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2}"
_NOT_NAMES = {  # capitalised words after "I'm"/"I am" that are not names
    "a", "an", "the", "not", "so", "very", "really", "just", "also", "still", "here", "there", "sorry", "fine",
    "good", "great", "happy", "sad", "sure", "glad", "afraid", "trying", "looking", "going", "working", "new",
    "interested", "curious", "wondering", "asking", "writing", "using", "from", "in", "at", "on", "okay", "ok",
    "tired", "confused", "stuck", "learning", "building", "planning", "thinking", "feeling", "ready", "able",
    "english", "chinese", "american", "british", "french", "german", "spanish", "italian", "japanese",
}
NAME_CUES = [
    re.compile(r"\b(?:[Mm]y name is|[Mm]y name's|[Cc]all me|[Tt]his is|[Nn]ame:)\s+(" + _NAME + ")"),
    re.compile(r"\b(?:I'm|I am|Im)\s+(" + _NAME + ")"),
    re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam)\.?\s+(" + _NAME + ")"),
    re.compile(r"(?:^|\n)\s*(?:[Rr]egards|[Bb]est|[Tt]hanks|[Cc]heers|[Ss]incerely|[Yy]ours),?\s*\n\s*(" + _NAME
               + r")\s*$", re.M),
    re.compile(r"(?:我叫|我的名字是|我的名字叫|本人)\s*([\u4e00-\u9fff]{2,4}?)(?=[，。,.！!？?\s]|$|是|今年|来自|在)"),
]


@dataclass
class Redaction:
    text: str
    counts: Counter = field(default_factory=Counter)


def _phone_spans(text: str) -> list[tuple[int, int]]:
    import phonenumbers

    spans = set()
    for region in PHONE_REGIONS:
        for m in phonenumbers.PhoneNumberMatcher(text, region):
            spans.add((m.start, m.end))
    return list(spans)


def _address_spans(text: str) -> list[tuple[int, int]]:
    out = []
    for m in ADDRESS.finditer(text):
        words = m.group(0).split()
        if len(words) >= 3 and words[1][:1].isupper():  # a capitalised street name after the house number
            out.append((m.start(), m.end()))
    return out


def _name_spans(text: str) -> list[tuple[int, int]]:
    out = []
    for pattern in NAME_CUES:
        for m in pattern.finditer(text):
            name = m.group(1)
            if name.split()[0].lower() in _NOT_NAMES:
                continue
            out.append((m.start(1), m.end(1)))
    return out


def find(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) findings, earliest first; overlapping findings merge into one span
    (of the longer one's kind), so nothing found is left half visible."""
    found = [(s, e, "email") for s, e in ((m.start(), m.end()) for m in EMAIL.finditer(text))]
    found += [(s, e, "phone") for s, e in _phone_spans(text)]
    found += [(s, e, "address") for s, e in _address_spans(text)]
    found += [(s, e, "name") for s, e in _name_spans(text)]
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    out: list[tuple[int, int, str]] = []
    for s, e, kind in found:
        if out and s < out[-1][1]:
            ps, pe, pkind = out[-1]
            out[-1] = (ps, max(pe, e), kind if e - s > pe - ps else pkind)
            continue
        out.append((s, e, kind))
    return out


def redact(text: str) -> Redaction:
    """``text`` with every finding replaced by its placeholder, and the counts by kind."""
    text = "" if text is None else str(text)
    parts, counts, last = [], Counter(), 0
    for s, e, kind in find(text):
        parts.append(text[last:s])
        parts.append(PLACEHOLDERS[kind])
        counts[kind] += 1
        last = e
    parts.append(text[last:])
    return Redaction("".join(parts), counts)
