"""Per-sample text descriptors, computed once at ingest with Evidently 0.7's definitions.

The monitors hand these columns to Evidently for drift tests, so each one must give exactly the
value Evidently's own descriptor gives for the same text (tests/daemon/ingest/test_describe.py
checks that against Evidently itself). Evidently is far too heavy for the ingest path, so the
definitions are re-implemented here with the standard library only:

- ``chars``: ``TextLength`` — the number of code points.
- ``words``: ``WordCount`` — drop every character that is not an ASCII letter or a space, then
  count the space-separated runs left. Digits, punctuation, newlines and non-Latin scripts vanish,
  so ``"don't"`` is one word, ``"a\\nb"`` is one word and a Cyrillic sentence has none.
- ``sentences``: ``SentenceCount`` — one more than the number of whitespace characters that follow
  ``.`` or ``?`` (not ``!``), except after an initialism (``e.g.``, ``U.S.``) or a title such as
  ``Mr.``; so the empty string has one sentence.
- ``non_letter_pct``: ``NonLetterCharacterPercentage`` — 100 times the share of characters that are
  neither letters (``str.isalpha``) nor a plain space.
- ``is_json``: ``IsValidJSON`` — ``json.loads`` succeeds, which includes bare scalars such as
  ``42``, ``"text"``, ``true``, ``null`` and Python's ``NaN``/``Infinity``.
- ``refusal``: ``Contains(items=phrases, case_sensitive=False, mode="any")`` — some phrase,
  lower-cased, is a substring of the lower-cased text.
- ``regex_<name>``: ``RegExp`` — ``re.search`` finds the pattern anywhere (Evidently 0.7's public
  ``RegExp`` searches; the legacy feature it replaced required a full match).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import TypeAlias

# Openings of refusals from chat models. Each phrase that has an apostrophe is listed again with
# the typographic one (U+2019) instead, which several models emit ("I\u2019m sorry, ...").
# Phrases customers themselves write ("I can't", "I am unable to") are avoided: the descriptor is
# computed for inputs too.
_REFUSAL_OPENINGS = (
    "I'm sorry, but I can't",
    "I'm sorry, but I cannot",
    "I'm sorry, I can't",
    "I'm sorry, I cannot",
    "I apologize, but I",
    "I can't help with",
    "I cannot help with",
    "I can't assist with",
    "I cannot assist with",
    "I'm unable to help",
    "I'm unable to assist",
    "I'm unable to provide",
    "I'm not able to help",
    "I won't be able to help",
    "I must decline",
    "As an AI",
)
DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = _REFUSAL_OPENINGS + tuple(
    phrase.replace("'", "\u2019") for phrase in _REFUSAL_OPENINGS if "'" in phrase
)

_NAME = re.compile(r"[a-z0-9_]+")

_Trie: TypeAlias = "dict[str, _Trie]"

# Everything but ASCII letters and the space. Deleting these bytes from the UTF-8 encoding deletes
# exactly the characters WordCount drops: every byte of a non-ASCII character is >= 0x80.
_NOT_WORD_BYTES = bytes(
    b for b in range(256) if not (chr(b).isascii() and (chr(b).isalpha() or b == 0x20))
)
_LETTER_OR_SPACE_BYTES = bytes(b for b in range(128) if chr(b).isalpha() or b == 0x20)

# A sentence break is the whitespace after "." or "?", unless the four characters before it read
# like an initialism ("g.e." in "e.g. ", "U.S. ") or the three before it a title ("Mr.", "Dr.").
_SENTENCE_BREAK = re.compile(r"[.?](?<![A-Z][a-z]\.)(?<!\w\.\w.)\s")

# json.loads skips only these four characters around a document.
_JSON_SPACE = " \t\n\r"
# The characters a JSON document (as Python's decoder reads it) can start with other than the
# letters of a bare literal; anything else fails to parse, so there is no need to try.
_JSON_OPENERS = frozenset('{["-0123456789')
_JSON_LITERALS = frozenset({"true", "false", "null", "NaN", "Infinity"})


class Describer:
    """Computes the descriptors of one text; build one per deployment and reuse it."""

    def __init__(
        self,
        refusal_phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES,
        patterns: Sequence[tuple[str, str]] = (),
    ) -> None:
        if isinstance(refusal_phrases, str):
            raise TypeError("refusal_phrases must be a sequence of phrases, not one string")
        if any(not phrase for phrase in refusal_phrases):
            raise ValueError("refusal_phrases contains an empty phrase, which would match any text")
        self._refusal = _any_substring(phrase.lower() for phrase in refusal_phrases)

        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for name, pattern in patterns:
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"descriptor pattern name {name!r} is invalid: use lower-case letters, "
                    "digits and underscores"
                )
            key = f"regex_{name}"
            if any(key == existing for existing, _ in self._patterns):
                raise ValueError(f"descriptor pattern name {name!r} is used twice")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"descriptor pattern {name!r} is not a valid regular expression: {exc}"
                ) from exc
            self._patterns.append((key, compiled))

        self._columns = (
            "chars",
            "words",
            "sentences",
            "non_letter_pct",
            "is_json",
            "refusal",
            *(key for key, _ in self._patterns),
        )
        self._absent: dict[str, int | float | bool] = {
            "chars": 0,
            "words": 0,
            "sentences": 0,
            "non_letter_pct": 0.0,
            "is_json": False,
            "refusal": False,
        }
        self._absent.update((key, False) for key, _ in self._patterns)

    @property
    def columns(self) -> tuple[str, ...]:
        """The keys :meth:`describe` returns, in order."""
        return self._columns

    def describe(self, text: str | None) -> dict[str, int | float | bool]:
        """The descriptors of ``text``; for a missing text (``None``), zeros and ``False``.

        Zeros rather than NaN: the values are stored as JSON, where NaN is not valid, and
        Evidently's own length, word, sentence and non-letter descriptors give 0 for a missing
        value too.
        """
        if text is None:
            return dict(self._absent)
        length = len(text)
        encoded = text.encode("utf-8", "surrogatepass")
        # Drop ASCII letters and spaces at C speed; what is left is ASCII non-letters and every
        # non-ASCII character, and only the latter can still be letters.
        rest = encoded.translate(None, _LETTER_OR_SPACE_BYTES)
        if rest.isascii():
            non_letters = len(rest)
        else:
            leftover = rest.decode("utf-8", "surrogatepass")
            non_letters = len(leftover) - sum(map(str.isalpha, leftover))
        row: dict[str, int | float | bool] = {
            "chars": length,
            "words": len(encoded.translate(None, _NOT_WORD_BYTES).split()),
            "sentences": _sentences(text),
            "non_letter_pct": 100 * non_letters / length if length else 0.0,
            "is_json": _is_json(text),
            "refusal": self._refusal is not None and self._refusal.search(text.lower()) is not None,
        }
        for key, pattern in self._patterns:
            row[key] = pattern.search(text) is not None
        return row


def _sentences(text: str) -> int:
    if "." not in text and "?" not in text:
        return 1
    return len(_SENTENCE_BREAK.findall(text)) + 1


def _is_json(text: str) -> bool:
    head = text.lstrip(_JSON_SPACE)[:1]
    if head not in _JSON_OPENERS:
        return text.strip(_JSON_SPACE) in _JSON_LITERALS
    try:
        json.loads(text)
    except ValueError:
        return False
    except RecursionError:  # thousands of nested brackets; Evidently itself would crash here
        return False
    return True


def _any_substring(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One regex that finds any of ``phrases`` literally, or None when there are none.

    The phrases go into a trie first: Python's regex engine tries alternatives one by one, so
    sharing prefixes ("i'm sorry, but i ca..." and "i'm sorry, i ca...") halves the search time.
    A phrase containing another adds nothing to "contains any" and is dropped, so no phrase ends
    where another goes on.
    """
    kept: list[str] = []
    for phrase in sorted(set(phrases), key=len):
        if not any(shorter in phrase for shorter in kept):
            kept.append(phrase)
    if not kept:
        return None
    trie: _Trie = {}
    for phrase in kept:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
    return re.compile(_trie_pattern(trie))


def _trie_pattern(node: _Trie) -> str:
    # Runs without a branch are walked in a loop, so recursion only goes as deep as the branching.
    chain = ""
    while len(node) == 1:
        ((char, node),) = node.items()
        chain += re.escape(char)
    if not node:
        return chain
    branches = (re.escape(char) + _trie_pattern(child) for char, child in sorted(node.items()))
    return chain + "(?:" + "|".join(branches) + ")"
