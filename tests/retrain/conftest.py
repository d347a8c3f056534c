"""What the prompt revision job's tests share: the classification target the fake OpenAI server
plays (which labels stolen-card messages right only when told how), its data, the spec of a
revision, and running the job against the fake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retrain.contract import PromptRevisionSpec
from retrain.prompt_revision import run
from tests.fake_openai import CHAT_ROUTE, FakeOpenAI

ACTIVE_SYSTEM = "Label the customer's message: card_lost, refund or balance. Answer the label."
FEW_SHOT = [{"input": "I want my money back for order 1", "output": "refund"}]
KEY_ENV = "DRIFTD_TEST_LLM_KEY"


def truth(text: str) -> str:
    lowered = text.casefold()
    if "stolen" in lowered or "lost my card" in lowered:
        return "card_lost"
    return "refund" if "refund" in lowered else "balance"


def without_rule(text: str) -> str:
    """The target model's blind spot: it takes a stolen card for a refund request."""
    return "refund" if "stolen" in text.casefold() else truth(text)


def rows(kind: str, count: int, start: int = 0) -> list[dict[str, str]]:
    texts = {
        "stolen": "Someone has stolen my card, case {}",
        "lost": "I lost my card on the bus, case {}",
        "refund": "Please refund purchase number {}",
        "balance": "What is my balance on account {}?",
    }
    return [
        {"input": texts[kind].format(i), "label": truth(texts[kind].format(i))}
        for i in range(start, start + count)
    ]


def write_jsonl(path: Path, items: list[dict[str, str]]) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path.name


def proposal(system: str) -> str:
    return json.dumps({"system": system})


def make_spec(
    tmp_path: Path,
    fake: FakeOpenAI,
    *,
    active_system: str = ACTIVE_SYSTEM,
    failing: list[dict[str, str]] | None = None,
    golden: list[dict[str, str]] | None = None,
    fresh: list[dict[str, str]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    if failing is None:
        failing = [
            {**row, "output": "refund", "why": "negative feedback"}
            for row in rows("stolen", 4, start=100)
        ]
    if golden is None:
        golden = rows("stolen", 8) + rows("lost", 4) + rows("refund", 6) + rows("balance", 6)
    if fresh is None:
        fresh = rows("stolen", 4, start=50) + rows("balance", 4, start=50)
    endpoint = {"base_url": fake.base_url, "api_key_env": KEY_ENV}
    return {
        "task": "classification",
        "active": {"system": active_system, "few_shot": FEW_SHOT, "model": "target-mini"},
        "failing_file": write_jsonl(tmp_path / "failing.jsonl", failing),
        "golden_set": write_jsonl(tmp_path / "golden.jsonl", golden),
        "fresh_file": write_jsonl(tmp_path / "fresh.jsonl", fresh),
        "candidates": 2,
        "proposer": {"model": "proposer-large", **endpoint},
        "target": {"model": "target-mini", **endpoint},
        "max_tokens": 200_000,
        "gate": {"metric": "accuracy", "margin": 0.0, "bootstrap_samples": 500},
        "seed": 7,
        "output_dir": "out",
        **overrides,
    }


def parsed(tmp_path: Path, raw: dict[str, Any]) -> PromptRevisionSpec:
    return PromptRevisionSpec.parse(raw, tmp_path)


def revise(tmp_path: Path, fake: FakeOpenAI, raw: dict[str, Any]) -> dict[str, Any]:
    """The job's result as ``result.json`` holds it."""
    result = run(parsed(tmp_path, raw), lambda _: None, environ={KEY_ENV: fake.api_key})
    found: dict[str, Any] = json.loads(result.model_dump_json())
    return found


def last_user_texts(fake: FakeOpenAI) -> list[str]:
    return [
        [m for m in call.body["messages"] if m["role"] == "user"][-1]["content"]
        for call in fake.calls(CHAT_ROUTE)
    ]
