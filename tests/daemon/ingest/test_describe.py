import csv
import math
import random
from pathlib import Path
from typing import Any

import pytest

from daemon.ingest.describe import DEFAULT_REFUSAL_PHRASES, Describer
from tests.helpers.imports import loaded_after

ROOT = Path(__file__).resolve().parents[3]
BANKING77 = ROOT / "examples" / "banking77" / "data" / "test.csv"

BASE_COLUMNS = ("chars", "words", "sentences", "non_letter_pct", "is_json", "refusal")

PATTERNS = (
    ("digits", r"\d+"),
    ("starts_with_i", r"^I\b"),
    ("ends_with_question", r"\?\s*$"),
    ("url", r"https?://\S+"),
    ("card", r"(?i)\bcards?\b"),
    ("empty", r"^$"),
    ("line_start", r"(?m)^Line"),
)

EDGE_CASES = (
    # empty and blank
    "",
    " ",
    "   \n\t ",
    "\n",
    "\r\n",
    # plain words and punctuation
    "Hello",
    "Hello, world!",
    "don't can't won't",
    "snake_case and camelCase and kebab-case",
    "tabs\tand\nnewlines\rjoin words",
    "Double  spaces.  Here.",
    "ALL CAPS SHOUTING!!!",
    "\x00\x01 control characters",
    # emoji and other scripts
    "\U0001f600",
    "emoji \U0001f600 test \U0001f389\U0001f389",
    "flag \U0001f1ec\U0001f1e7 and family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "Привет, как дела? Всё хорошо. Спасибо.",
    "Где моя карта? Я заказал её неделю назад.",
    "我的卡什么时候到\uff1f谢谢。",
    "你好. 再见? 好",
    "مرحبا، أين بطاقتي؟ شكرا.",
    "Ünïcödé façade naïve café. Straße STRASSE.",
    "e\u0301 combining accent and \u01c5 title-case digraph",
    "\u212a Kelvin sign, \u017f long s, \u0130stanbul",
    "\u00bd \u00b2 \u2462 \u216b numeric but not decimal",
    "\u00aa\u00ba ordinal indicators",
    "a.\u2003b. em space after a full stop",
    "a\ud800b lone surrogate",
    # numbers only
    "12345",
    "3.14159",
    "-42",
    "1e10",
    "42",
    "0042",
    "1 000 000",
    "+1 (555) 010-0000",
    "1" * 5000,
    # JSON and near-JSON
    '"str"',
    "'single'",
    "true",
    "false",
    "null",
    "None",
    "NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "True",
    " 42 ",
    "\ttrue\n",
    "true\x0c",
    "truely",
    '\t{"a": 1}\n',
    '{"a": 1}',
    '{"a": [1, 2, {"b": null}], "c": "d. e? f"}',
    "[1, 2, 3]",
    "[]",
    "{}",
    '{"a": 1',
    "{'a': 1}",
    '{"a": 1} trailing',
    "[1, 2,]",
    '{"a": NaN}',
    "\ufeff{}",
    "\u00a0{}",
    "{}\x0c",
    "[" * 100 + "]" * 100,
    '[{"intent": "card_arrival", "confidence": 0.93}]',
    "42 apples",
    "-",
    '"unterminated',
    # sentences
    "Is this it... I think so... yes.",
    "What?! Really?! No way.",
    "Wait... what? ok.",
    "Mr. Smith went to Washington. He arrived at 5 p.m. today.",
    "I live in the U.S. and work for the U.N. in N.Y. city.",
    "e.g. this and i.e. that. Done.",
    "Dr. Who? Mrs. Brown. Ms. Green. St. Louis. OK",
    "Mr? Yes. Mr.\nNo.",
    "Ж.Д. x. Ж.Д.\ty",
    "A.B. C.D. e.f. g",
    "Numbers like 3.5 and 1.2.3 ok. Next.",
    "Visit https://example.com/path?x=1. Then call.",
    "See https://example.com/a?b=c&d=e and www.example.org/x.html? Yes.",
    "Email me at a.b@example.co.uk. Thanks!",
    "Line one.\nLine two?\nLine three!",
    "First.\tSecond.\r\nThird.",
    "Ends with a dot.",
    "Ends with space. ",
    "?",
    ".",
    ". ",
    "? ?",
    "...",
    "... ...",
    ".\n\n.",
    # refusals and near misses
    "I'M SORRY, BUT I CAN'T DO THAT.",
    "Well, i'm sorry, but i cannot share that.",
    "I\u2019m sorry, but I can\u2019t assist with that.",
    "As an AI language model, I don't have opinions.",
    "as an aide, I help",
    "Sure! Here's how to do it.",
    "I can\u2019t help with that.",
    "Unfortunately I must decline this request.",
    "\u0130'm sorry, but I can't",
    "I can't find my card",
    "I am unable to top up my account.",
    # longer model outputs
    "Thanks for reaching out! Your new card usually arrives within 5-7 business days. "
    "You can track it in the app under Cards > Status.",
    "To top up by bank transfer:\n1. Open Account.\n2. Tap Top up.\n3. Follow the steps.\n"
    "Transfers in EUR or GBP are free; others cost 0.5%.",
    "Your payment of \u00a323.50 to Tesco is still pending. Pending card payments usually "
    "complete within 1-3 days. If it hasn't cleared by then, contact us.",
    '```json\n{"refund": true}\n```',
)


def _banking77_questions() -> list[str]:
    with BANKING77.open(newline="", encoding="utf-8") as file:
        return [row["text"] for row in csv.DictReader(file)]


# Pieces that sit on the definitions' edges, for random texts: sentence ends after initialisms
# and titles, JSON openers and literals, characters whose case or letterhood is unusual.
_PIECES = (
    *"Aa Zz.?!. \n\t\r{}[]\",:0129-eE+tfnNIu_'",
    *("\u2019", "\u0416", "\u0436", "\u0130", "\u017f", "\u212a", "\u00bd", "\u00b2", "\u00e9"),
    *("e\u0301", "\u2003", "\x85", "\x0c", "\U0001f600", "\u4e2d", "\u00df", "\ud800"),
    *("true", "null", "NaN", "Infinity", "Mr.", "U.S.", "e.g. ", "i'm sorry, i can't", "AS AN AI"),
)


def _random_texts(count: int) -> tuple[str, ...]:
    rng = random.Random(77)
    return tuple(
        "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 14))) for _ in range(count)
    )


CORPUS = tuple(_banking77_questions()) + EDGE_CASES + _random_texts(500)


@pytest.fixture(scope="module")
def describer() -> Describer:
    return Describer(patterns=PATTERNS)


@pytest.fixture(scope="module")
def evidently() -> Any:
    """``evidently.descriptors``, imported once: the import alone takes seconds."""
    import evidently.descriptors

    return evidently.descriptors


def _with_evidently(texts: list[str | None], descriptors: list[Any]) -> list[dict[str, Any]]:
    """One row per text with Evidently's values, through its public Dataset API."""
    import pandas as pd
    from evidently import DataDefinition, Dataset

    dataset = Dataset.from_pandas(
        pd.DataFrame({"text": texts}),
        data_definition=DataDefinition(text_columns=["text"]),
        descriptors=descriptors,
    )
    rows: list[dict[str, Any]] = dataset.as_dataframe().to_dict("records")
    return rows


@pytest.fixture(scope="module")
def evidently_rows(evidently: Any) -> list[dict[str, Any]]:
    """Evidently 0.7's own descriptors for CORPUS."""
    texts: list[str | None] = list(CORPUS)
    rows = _with_evidently(
        texts,
        [
            evidently.TextLength("text", alias="chars"),
            evidently.WordCount("text", alias="words"),
            evidently.SentenceCount("text", alias="sentences"),
            evidently.IsValidJSON("text", alias="is_json"),
            evidently.Contains(
                "text",
                items=list(DEFAULT_REFUSAL_PHRASES),
                case_sensitive=False,
                mode="any",
                alias="refusal",
            ),
            *(
                evidently.RegExp("text", reg_exp=pattern, alias=f"regex_{name}")
                for name, pattern in PATTERNS
            ),
        ],
    )
    # Evidently divides by zero on the empty string here; driftd gives 0.0 (tested below).
    non_empty: list[str | None] = [text for text in texts if text]
    percentages = iter(
        _with_evidently(
            non_empty, [evidently.NonLetterCharacterPercentage("text", alias="non_letter_pct")]
        )
    )
    for text, row in zip(texts, rows, strict=True):
        row["non_letter_pct"] = next(percentages)["non_letter_pct"] if text else None
    return rows


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 300
    assert len(EDGE_CASES) >= 100


@pytest.mark.parametrize("key", BASE_COLUMNS + tuple(f"regex_{name}" for name, _ in PATTERNS))
def test_each_value_equals_evidentlys(
    key: str, describer: Describer, evidently_rows: list[dict[str, Any]]
) -> None:
    mismatches = []
    for text, theirs in zip(CORPUS, evidently_rows, strict=True):
        ours = describer.describe(text)[key]
        expected = theirs[key]
        if expected is None:  # only non_letter_pct of "", where Evidently raises
            continue
        if isinstance(ours, float):
            same = math.isclose(ours, float(expected), rel_tol=1e-12, abs_tol=1e-12)
        elif isinstance(ours, bool):
            same = ours is bool(expected)
        else:
            same = ours == int(expected)
        if not same:
            mismatches.append((text[:60], ours, expected))
    assert mismatches == []


def test_the_corpus_exercises_both_values_of_every_flag(describer: Describer) -> None:
    rows = [describer.describe(text) for text in CORPUS]
    for key in describer.columns:
        if isinstance(rows[0][key], bool):
            assert {row[key] for row in rows} == {True, False}, key


def test_evidently_cannot_take_the_percentage_of_an_empty_text(evidently: Any) -> None:
    with pytest.raises(ZeroDivisionError):
        _with_evidently([""], [evidently.NonLetterCharacterPercentage("text", alias="pct")])
    assert Describer().describe("")["non_letter_pct"] == 0.0


def test_a_missing_text_gets_evidentlys_values_for_a_missing_value(evidently: Any) -> None:
    theirs = _with_evidently(
        [None, "x"],
        [
            evidently.TextLength("text", alias="chars"),
            evidently.WordCount("text", alias="words"),
            evidently.SentenceCount("text", alias="sentences"),
            evidently.NonLetterCharacterPercentage("text", alias="non_letter_pct"),
            evidently.Contains("text", items=["x"], case_sensitive=False, alias="refusal"),
        ],
    )[0]
    ours = Describer(refusal_phrases=["x"]).describe(None)
    for key in ("chars", "words", "sentences", "non_letter_pct", "refusal"):
        assert ours[key] == theirs[key], key


# --- each descriptor on handmade cases ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "chars"),
    [("", 0), ("héllo", 5), ("\U0001f600!", 2), ("a\nb", 3)],
)
def test_chars_counts_code_points(text: str, chars: int) -> None:
    assert Describer().describe(text)["chars"] == chars


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", 0),
        ("Hello, world!", 2),
        ("don't stop", 2),  # the apostrophe is dropped, "dont" is one word
        ("a\nb", 1),  # so is the newline: "ab"
        ("42 apples", 1),
        ("Привет мир", 0),  # only ASCII letters count
        ("café au lait", 3),
        ("  spaced   out  ", 2),
    ],
)
def test_words_counts_runs_of_ascii_letters(text: str, words: int) -> None:
    assert Describer().describe(text)["words"] == words


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("", 1),
        ("One", 1),
        ("One. Two? Three!", 3),
        ("Wait! Stop", 1),  # "!" does not end a sentence
        ("End.", 1),  # nor does a full stop with nothing after it
        ("Mr. Smith left. Bye", 2),
        ("e.g. this one", 1),
        ("Really?\nYes.\tNo", 3),
        ("Wait... what", 2),
    ],
)
def test_sentences_split_after_full_stops_and_question_marks(text: str, sentences: int) -> None:
    assert Describer().describe(text)["sentences"] == sentences


@pytest.mark.parametrize(
    ("text", "percent"),
    [
        ("", 0.0),
        ("ab", 0.0),
        ("a b", 0.0),
        ("a1", 50.0),
        ("é!", 50.0),
        ("a\tb", 100 / 3),
        ("Привет!", 100 / 7),
        ("42", 100.0),
    ],
)
def test_non_letter_pct_is_the_share_of_neither_letters_nor_spaces(
    text: str, percent: float
) -> None:
    value = Describer().describe(text)["non_letter_pct"]
    assert isinstance(value, float)
    assert value == pytest.approx(percent)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('{"a": 1}', True),
        (" [1, 2]\n", True),
        ("42", True),
        ('"str"', True),
        ("null", True),
        (" true ", True),
        ("NaN", True),
        ("", False),
        ("   ", False),
        ("{'a': 1}", False),
        ('{"a": 1', False),
        ("42 apples", False),
        ("Nothing here", False),
        ("\u00a042", False),
        ("[" * 100_000, False),
        ("[" * 100_000 + "]" * 100_000, False),  # too deep for json.loads; Evidently would raise
    ],
)
def test_is_json_accepts_any_json_document(text: str, valid: bool) -> None:
    assert Describer().describe(text)["is_json"] is valid


# --- refusal --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "i'M SORRY, BUT i CAN'T",
        "Thanks for asking. As an AI, I have no bank account.",
        "I\u2019m sorry, but I can\u2019t assist with that.",
    ],
)
def test_refusal_finds_a_default_phrase_anywhere_in_any_case(text: str) -> None:
    assert Describer().describe(text)["refusal"] is True


@pytest.mark.parametrize(
    "text", ["Your card arrives on Monday.", "I can't find my card", "I am sorry to hear that."]
)
def test_refusal_is_false_without_a_phrase(text: str) -> None:
    assert Describer().describe(text)["refusal"] is False


def test_refusal_uses_the_configured_phrases_literally() -> None:
    describer = Describer(refusal_phrases=["Kann ich nicht", "not (allowed)", "no."])
    assert describer.describe("Das kann ich nicht tun")["refusal"] is True
    assert describer.describe("That is NOT (ALLOWED) here")["refusal"] is True
    assert describer.describe("That is not allowed")["refusal"] is False
    assert describer.describe("say no")["refusal"] is False
    assert describer.describe("I'm sorry, but I can't")["refusal"] is False


def test_a_phrase_inside_another_still_counts_on_its_own() -> None:
    describer = Describer(refusal_phrases=["cannot help with that", "cannot"])
    assert describer.describe("I cannot")["refusal"] is True


def test_no_phrases_means_no_refusals() -> None:
    assert Describer(refusal_phrases=[]).describe("I'm sorry, but I can't")["refusal"] is False


def test_an_empty_phrase_is_refused() -> None:
    with pytest.raises(ValueError, match="empty phrase"):
        Describer(refusal_phrases=["I cannot", ""])


def test_a_single_string_is_not_taken_for_a_list_of_phrases() -> None:
    with pytest.raises(TypeError, match="not one string"):
        Describer(refusal_phrases="I cannot")


def test_the_default_phrases_come_with_typographic_apostrophes() -> None:
    assert "I'm sorry, but I can't" in DEFAULT_REFUSAL_PHRASES
    assert "I\u2019m sorry, but I can\u2019t" in DEFAULT_REFUSAL_PHRASES
    assert len(set(DEFAULT_REFUSAL_PHRASES)) == len(DEFAULT_REFUSAL_PHRASES)


# --- patterns -------------------------------------------------------------------------------


def test_patterns_are_searched_for_anywhere_and_case_sensitively() -> None:
    describer = Describer(patterns=[("order_id", r"ORD-\d{4}"), ("card", r"(?i)card")])
    row = describer.describe("Where is order ORD-1234? My CARD too.")
    assert row["regex_order_id"] is True
    assert row["regex_card"] is True
    row = describer.describe("where is ord-1234")
    assert row["regex_order_id"] is False
    assert row["regex_card"] is False


def test_columns_list_the_keys_in_order() -> None:
    describer = Describer(patterns=[("b", "x"), ("a", "y")])
    assert describer.columns == (*BASE_COLUMNS, "regex_b", "regex_a")
    assert tuple(describer.describe("text")) == describer.columns
    assert tuple(describer.describe(None)) == describer.columns
    assert Describer().columns == BASE_COLUMNS


@pytest.mark.parametrize("name", ["Card", "order-id", "", "naïve", "a b", "x\n"])
def test_a_bad_pattern_name_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match="name") as error:
        Describer(patterns=[(name, "x")])
    assert repr(name) in str(error.value)


def test_a_pattern_name_used_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'card' is used twice"):
        Describer(patterns=[("card", "card"), ("card", "CARD")])


def test_an_invalid_regex_is_refused_naming_the_pattern() -> None:
    with pytest.raises(ValueError, match="'order_id' is not a valid regular expression"):
        Describer(patterns=[("ok", "x"), ("order_id", r"ORD-(\d+")])


# --- missing text and value types -----------------------------------------------------------


def test_a_missing_text_gives_zeros_and_false() -> None:
    describer = Describer(patterns=[("anything", ".*")])
    assert describer.describe(None) == {
        "chars": 0,
        "words": 0,
        "sentences": 0,
        "non_letter_pct": 0.0,
        "is_json": False,
        "refusal": False,
        "regex_anything": False,
    }


def test_a_missing_text_differs_from_an_empty_one() -> None:
    # As in Evidently: no text has no sentence, the empty text has one.
    describer = Describer()
    assert describer.describe(None)["sentences"] == 0
    assert describer.describe("")["sentences"] == 1


def test_each_call_returns_a_fresh_dict() -> None:
    describer = Describer()
    describer.describe(None)["chars"] = 99
    assert describer.describe(None)["chars"] == 0


def test_values_have_json_friendly_types() -> None:
    row = Describer(patterns=[("x", "x")]).describe("Some text. With x?")
    assert [type(row[key]) for key in row] == [int, int, int, float, bool, bool, bool]


def test_importing_it_loads_no_heavy_library() -> None:
    code = "import daemon.ingest.describe as d; d.Describer().describe('{\"a\": 1}')"
    assert loaded_after(code, ("evidently", "pandas", "nltk", "numpy")) == []
