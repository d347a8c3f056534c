"""Job kind ``revise_prompt``: an LLM proposes revised system prompts from failing production
samples, each is scored on held-out labelled data, and the best is gated against the champion.

For a ``prompted`` deployment, re-tuning means a better prompt, not new weights. The job

1. asks the proposer model ``candidates`` times, with the meta-prompt (``meta_prompt.md``
   beside this module) filled with the champion prompt and a sample of the failing examples,
   for a revised system prompt (its reply: JSON ``{"system": ...}``);
2. runs the champion prompt and each candidate on the target model (the deployment's) over the
   golden set and the fresh production samples, and scores each answer by exact match with the
   label (whitespace stripped, case folded);
3. gates the best candidate against the champion with ``retrain.gate.compare`` on those same
   examples (paired bootstrap; see ``retrain.gate`` for why the interval's lower bound).

The samples used to write a prompt are not the ones used to score it: a golden or fresh row
whose input is also in ``failing_file`` is dropped before scoring, and the result says how many
were. Otherwise a proposer that copies the failures into its prompt would look better than it is.

Every call's tokens (from its answer's ``usage``) count against ``max_tokens``, the cap of the
whole job. Before each call the job estimates its cost (prompt characters / 4 plus the answer's
cap) and stops with a ``JobError`` giving the numbers when that would pass the cap: a scheduled
job spends at most what it was allowed, and a half-scored comparison is no verdict.

Only ``task: classification`` is supported: exact match needs a label set. Revising the prompt
of a ``generation`` deployment needs a judge to score free text and is not built yet; such a
spec is refused.

Spec keys: ``champion`` ({"system", "few_shot": [{"input", "output"}], "model"}),
``failing_file`` (JSONL: ``input``, ``output``, ``label`` or ``expected``, ``why``),
``golden_set`` (JSONL: ``input``, ``label``), ``fresh_file`` (optional JSONL: ``input``,
``label``), ``task``, ``candidates`` (3), ``failures_shown`` (20), ``proposer`` and ``target``
(``model``, ``base_url``, ``api_key_env`` (``OPENAI_API_KEY``)), ``max_tokens``, ``gate``
(``metric`` (accuracy), ``margin`` (0), ``bootstrap_samples`` (1000)), ``seed`` (0),
``output_dir``. Keys come from the job's environment, never the spec. Relative paths are read
from the spec's directory. A rejection is a result (exit 0), not a failure.

Never imports ``daemon``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import numpy as np

from retrain.errors import JobError, SpecError
from retrain.evaluate import EvaluationError, Example, read_golden_set
from retrain.gate import METRICS, compare
from retrain.judge import CHARS_PER_TOKEN, TokenBudget

if TYPE_CHECKING:
    from openai import OpenAIError

Progress = Callable[[str], None]

META_PROMPT_FILE = Path(__file__).with_name("meta_prompt.md")
ANSWER_MAX_TOKENS = 32
"""The cap on one label answer: a label is a few words, and a model that rambles is wrong."""
PROPOSAL_MAX_TOKENS = 1500
"""The cap on one proposed prompt: room for a thorough prompt, not for an essay."""
MAX_SHOWN_CHARS = 500
"""How much of each failing example's text the meta-prompt shows: enough to see the pattern."""
PROPOSER_TEMPERATURE = 1.0
"""Candidates asked of one model with one prompt must differ to be worth scoring apart."""

_REQUIRED = ("champion", "failing_file", "golden_set", "task", "max_tokens", "output_dir")


class RevisionError(JobError):
    """The revision could not be done with the data and models the spec names."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI-compatible chat model: its name, where it is served, where its key is."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompted deployment's prompt: system prompt, few-shot pairs (input, output), model."""

    system: str
    few_shot: tuple[tuple[str, str], ...]
    model: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "few_shot": [{"input": given, "output": answer} for given, answer in self.few_shot],
            "model": self.model,
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """A production sample the champion got wrong: what it answered, the right label, why."""

    input: str
    output: str
    label: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class Proposal:
    """One answer of the proposer: a system prompt, or ``error`` saying why it held none."""

    system: str | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RevisionSpec:
    champion: Prompt
    failing_file: Path
    golden_set: Path
    output_dir: Path
    proposer: Endpoint
    target: Endpoint
    max_tokens: int
    fresh_file: Path | None = None
    task: str = "classification"
    candidates: int = 3
    failures_shown: int = 20
    metric: str = "accuracy"
    margin: float = 0.0
    bootstrap_samples: int = 1000
    seed: int = 0


def parse_spec(
    raw: Mapping[str, Any], base: Path, *, warn: Callable[[str], None] = lambda _: None
) -> RevisionSpec:
    """Check a spec and resolve its paths against ``base``; ``SpecError`` lists every problem.
    Unknown keys are passed to ``warn``."""
    problems = [f"{key!r} is required" for key in _REQUIRED if raw.get(key) is None]
    known = {*RevisionSpec.__dataclass_fields__, *_REQUIRED, "gate", "deployment", "trigger"}
    known |= {"champion_version", "promote", "created_at", "kind", "decision_event_id"}
    known |= {"check_ids", "candidate", "lineage"}
    known -= {"metric", "margin", "bootstrap_samples"}
    unknown = sorted(key for key in raw if key not in known)
    if unknown:
        warn(f"ignoring spec keys {', '.join(map(repr, unknown))}")
    if raw.get("api_key") is not None:
        problems.append(
            "'api_key' must not be in the spec: put the keys in the job's environment, in the "
            "variables that proposer.api_key_env and target.api_key_env name"
        )
    task = raw.get("task")
    if task == "generation":
        problems.append(
            "task 'generation' is not supported by revise_prompt yet: candidates are scored by "
            "exact match with a label, which needs task 'classification'; revise a generation "
            "prompt by hand for now"
        )
    elif task is not None and task != "classification":
        problems.append(f"'task' must be classification, got {task!r}")

    def path(key: str) -> Path | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            problems.append(f"{key!r} must be a path, got {value!r}")
            return None
        found = base.absolute() / value
        if key != "output_dir" and not found.is_file():
            problems.append(f"{key} {found} is not a file")
        return found

    def integer(key: str, default: int) -> int:
        value = raw.get(key, default)
        if value is None:  # a required key, already reported missing
            return 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{key!r} must be a whole number of at least 1, got {value!r}")
            return 1
        return value

    failing, golden = path("failing_file"), path("golden_set")
    fresh, output = path("fresh_file"), path("output_dir")
    target = _endpoint(raw, "target", problems)
    proposer = _endpoint(raw, "proposer", problems)
    champion = _prompt(raw.get("champion"), target, problems)
    gate = raw.get("gate") or {}
    if not isinstance(gate, Mapping):
        problems.append(f"'gate' must be an object, got {gate!r}")
        gate = {}
    metric = gate.get("metric", "accuracy")
    if metric not in METRICS:
        problems.append(f"gate.metric must be one of {', '.join(METRICS)}, got {metric!r}")
    margin = gate.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        problems.append(f"gate.margin must be a number, got {margin!r}")
        margin = 0.0
    samples = gate.get("bootstrap_samples", 1000)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        problems.append(f"gate.bootstrap_samples must be an integer of at least 1, got {samples!r}")
        samples = 1
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"'seed' must be an integer, got {seed!r}")
        seed = 0
    max_tokens = integer("max_tokens", 0)
    candidates = integer("candidates", 3)
    shown = integer("failures_shown", 20)
    if problems:
        raise SpecError("; ".join(problems))
    assert failing is not None
    assert golden is not None
    assert output is not None
    assert target is not None
    assert proposer is not None
    assert champion is not None
    return RevisionSpec(
        champion=champion,
        failing_file=failing,
        golden_set=golden,
        output_dir=output,
        proposer=proposer,
        target=target,
        max_tokens=max_tokens,
        fresh_file=fresh,
        candidates=candidates,
        failures_shown=shown,
        metric=str(metric),
        margin=float(margin),
        bootstrap_samples=samples,
        seed=seed,
    )


def _endpoint(raw: Mapping[str, Any], key: str, problems: list[str]) -> Endpoint | None:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        problems.append(f"{key!r} must be {{'model', 'base_url', 'api_key_env'}}, got {value!r}")
        return None
    model, url = value.get("model"), value.get("base_url")
    env = value.get("api_key_env", "OPENAI_API_KEY")
    if not isinstance(model, str) or not model:
        problems.append(f"{key}.model must name a chat model, got {model!r}")
    if url is not None and not (isinstance(url, str) and url):
        problems.append(f"{key}.base_url must be a URL, got {url!r}")
    if not isinstance(env, str) or not env:
        problems.append(f"{key}.api_key_env must name an environment variable, got {env!r}")
    if "api_key" in value:
        problems.append(
            f"{key}.api_key must not be in the spec: put the key in the environment variable "
            f"that {key}.api_key_env names"
        )
    return Endpoint(str(model), url, str(env))


def _prompt(value: Any, target: Endpoint | None, problems: list[str]) -> Prompt | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("system"), str):
        problems.append(f"'champion' must be {{'system', 'few_shot', 'model'}}, got {value!r}")
        return None
    pairs: list[tuple[str, str]] = []
    for number, shot in enumerate(value.get("few_shot") or [], start=1):
        answer = shot.get("output", shot.get("label")) if isinstance(shot, Mapping) else None
        given = shot.get("input") if isinstance(shot, Mapping) else None
        if not isinstance(given, str) or not isinstance(answer, str):
            problems.append(
                f"champion.few_shot item {number} must be {{'input': ..., 'output': ...}}, "
                f"got {shot!r}"
            )
            continue
        pairs.append((given, answer))
    model = value.get("model") or (target.model if target is not None else "")
    return Prompt(value["system"], tuple(pairs), str(model))


def run(
    spec: RevisionSpec, progress: Progress, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Propose, score and gate revised prompts; the job's result (see the module docstring).

    Keys are read from ``environ`` (the process environment by default) under each endpoint's
    ``api_key_env``; error messages are redacted of them."""
    environment = os.environ if environ is None else environ
    keys = {}
    for role, endpoint in (("proposer", spec.proposer), ("target", spec.target)):
        key = environment.get(endpoint.api_key_env, "").strip()
        if not key:
            raise RevisionError(
                f"no API key for the {role}: set the environment variable "
                f"{endpoint.api_key_env} for the job ({role}.api_key_env in the spec names it)"
            )
        keys[role] = key
    failures = read_failures(spec.failing_file)
    failing_inputs = {_normal(failure.input) for failure in failures}
    golden, dropped_golden = _disjoint(_read_labelled(spec.golden_set), failing_inputs)
    fresh: list[Example] = []
    dropped_fresh = 0
    if spec.fresh_file is not None:
        fresh, dropped_fresh = _disjoint(_read_labelled(spec.fresh_file), failing_inputs)
    examples = golden + fresh
    if dropped_golden or dropped_fresh:
        progress(
            f"dropped {dropped_golden} golden and {dropped_fresh} fresh examples whose input is "
            "also a failing example: the samples that write a prompt do not score it"
        )
    if not examples:
        raise RevisionError(
            f"nothing left to score on: every example of {spec.golden_set}"
            + (f" and {spec.fresh_file}" if spec.fresh_file else "")
            + f" is also in {spec.failing_file}; add labelled examples the failures do not hold"
        )
    budget = _Budget(spec.max_tokens)
    proposer = _Chat(spec.proposer, keys["proposer"], "proposer", budget)
    target = _Chat(spec.target, keys["target"], "target", budget)
    try:
        proposals = _propose(spec, failures, examples, proposer, progress)
        truth = [_normal(example.label) for example in examples]
        champion_predictions = _answers(spec.champion, examples, target)
        champion_scores = _score(truth, champion_predictions)
        progress(f"champion: {spec.metric} {champion_scores[spec.metric]:.4f} on {len(truth)}")
        scored: list[dict[str, Any]] = []
        predictions: list[list[str] | None] = []
        for number, proposal in enumerate(proposals, start=1):
            if proposal.system is None:
                scored.append({"index": number, "system": None, "error": proposal.error})
                predictions.append(None)
                continue
            prompt = Prompt(proposal.system, spec.champion.few_shot, spec.champion.model)
            predicted = _answers(prompt, examples, target)
            scores = _score(truth, predicted)
            progress(f"candidate {number}: {spec.metric} {scores[spec.metric]:.4f}")
            scored.append({"index": number, "system": proposal.system, "scores": scores})
            predictions.append(predicted)
    finally:
        proposer.close()
        target.close()
    usable = [i for i, predicted in enumerate(predictions) if predicted is not None]
    if not usable:
        reasons = "; ".join(str(entry["error"]) for entry in scored)
        raise RevisionError(
            f"the proposer {spec.proposer.model} gave no usable prompt in {spec.candidates} "
            f"answers ({reasons}); check the proposer model, or raise 'candidates'"
        )
    best = max(usable, key=lambda i: scored[i]["scores"][spec.metric])
    best_predictions = predictions[best]
    assert best_predictions is not None
    verdict = compare(
        champion_predictions,
        best_predictions,
        truth,
        metric=spec.metric,
        margin=spec.margin,
        bootstrap_samples=spec.bootstrap_samples,
        seed=spec.seed,
    )
    progress(f"gate: candidate {best + 1} {'passed' if verdict.passed else 'rejected'}")
    candidate = Prompt(scored[best]["system"], spec.champion.few_shot, spec.champion.model)
    return {
        "passed": verdict.passed,
        "candidate": candidate.as_dict(),
        "best": best + 1,
        "gate": verdict.as_dict(),
        "champion": {"scores": champion_scores},
        "candidates": scored,
        "tokens": {
            "used": budget.spent,
            "limit": budget.limit,
            "proposer": proposer.spent,
            "target": target.spent,
        },
        "dropped_overlaps": {"golden": dropped_golden, "fresh": dropped_fresh},
        "evaluated_on": {"golden": len(golden), "fresh": len(fresh)},
    }


def read_failures(path: Path) -> list[Failure]:
    """The failing examples of a JSONL file; ``RevisionError`` names the first bad line."""
    failures = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except ValueError as error:
                raise RevisionError(f"{where} is not JSON: {error}") from error
            label = row.get("label", row.get("expected")) if isinstance(row, dict) else None
            if not isinstance(row, dict) or not isinstance(row.get("input"), str):
                raise RevisionError(f"{where} has no text under 'input'")
            if not isinstance(label, str) or not label:
                raise RevisionError(
                    f"{where} has no right answer: a failing example needs 'label' or "
                    "'expected' (the label the deployment should have given)"
                )
            failures.append(
                Failure(
                    row["input"], str(row.get("output") or ""), label, str(row.get("why") or "")
                )
            )
    if not failures:
        raise RevisionError(
            f"failing file {path} has no examples: there is nothing to revise the prompt from"
        )
    return failures


def _read_labelled(path: Path) -> list[Example]:
    try:
        return read_golden_set(path, "input", "label")
    except EvaluationError as error:
        raise RevisionError(str(error)) from None


def _disjoint(examples: list[Example], failing: set[str]) -> tuple[list[Example], int]:
    kept = [example for example in examples if _normal(example.input) not in failing]
    return kept, len(examples) - len(kept)


def _normal(text: str) -> str:
    return text.strip().casefold()


def _propose(
    spec: RevisionSpec,
    failures: Sequence[Failure],
    examples: Sequence[Example],
    proposer: _Chat,
    progress: Progress,
) -> list[Proposal]:
    """One proposal per candidate asked for, in order."""
    # A seeded sample, not the first rows: the file is in time order and the first rows would
    # show one moment's failures only. numpy, as the gate's bootstrap draws its resamples.
    picked = np.random.default_rng(spec.seed).permutation(len(failures))[: spec.failures_shown]
    shown = [failures[i] for i in sorted(picked)]
    labels = sorted({example.label for example in examples} | {f.label for f in failures})
    meta = Template(META_PROMPT_FILE.read_text(encoding="utf-8")).substitute(
        labels="\n".join(f"- {label}" for label in labels),
        system=spec.champion.system,
        few_shot="\n".join(
            f"- user: {_clip(given)}\n  assistant: {_clip(answer)}"
            for given, answer in spec.champion.few_shot
        )
        or "(none)",
        failures="\n".join(
            f"- message: {_clip(f.input)}\n  answered: {_clip(f.output)}\n  right label: "
            f"{f.label}" + (f"\n  why wrong: {_clip(f.why)}" if f.why else "")
            for f in shown
        ),
    )
    proposals: list[Proposal] = []
    for number in range(1, spec.candidates + 1):
        progress(f"asking {spec.proposer.model} for candidate {number} of {spec.candidates}")
        answer = proposer.ask(
            [{"role": "user", "content": meta}], PROPOSAL_MAX_TOKENS, PROPOSER_TEMPERATURE
        )
        try:
            proposals.append(Proposal(parse_proposal(answer)))
        except ValueError as unreadable:
            progress(f"candidate {number}: {unreadable}")
            proposals.append(Proposal(None, str(unreadable)))
    return proposals


def parse_proposal(text: str) -> str:
    """The system prompt in a proposer's answer; ``ValueError`` saying what was wrong.

    The first JSON object with a non-empty string under ``"system"`` is taken, so prose or a
    code fence around it does no harm."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char != "{":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        system = value.get("system") if isinstance(value, dict) else None
        if isinstance(system, str) and system.strip():
            return system
    shown = text.strip()[:200]
    raise ValueError(f'the answer holds no JSON object with a non-empty "system": {shown!r}')


def _answers(prompt: Prompt, examples: Sequence[Example], target: _Chat) -> list[str]:
    """The target model's answer to each example under ``prompt``, normalised for exact match."""
    base: list[dict[str, str]] = [{"role": "system", "content": prompt.system}]
    for given, answer in prompt.few_shot:
        base += [{"role": "user", "content": given}, {"role": "assistant", "content": answer}]
    return [
        _normal(target.ask([*base, {"role": "user", "content": example.input}], ANSWER_MAX_TOKENS))
        for example in examples
    ]


def _score(truth: list[str], predicted: list[str]) -> dict[str, float]:
    from retrain.evaluate import score

    found = score(truth, predicted)
    return {metric: float(found[metric]) for metric in METRICS}


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_SHOWN_CHARS else flat[: MAX_SHOWN_CHARS - 1] + "…"


@dataclass
class _Budget:
    """The job's token cap, shared by the proposer and the target."""

    limit: int
    spent: int = 0


class _Chat:
    """One chat model, its client, and the tokens it has spent against the job's cap."""

    def __init__(self, endpoint: Endpoint, key: str, role: str, budget: _Budget) -> None:
        import openai

        self.endpoint = endpoint
        self.role = role
        self.budget = budget
        self.spent = 0
        self.calls = 0
        self._key = key
        self._api = openai.OpenAI(
            api_key=key, base_url=endpoint.base_url, timeout=60.0, max_retries=2
        )

    def close(self) -> None:
        self._api.close()

    def ask(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0) -> str:
        """The model's answer; ``RevisionError`` when the cap would be passed or it fails."""
        import openai

        estimate = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + max_tokens
        if not TokenBudget(self.budget.limit, self.budget.spent).allows(estimate):
            raise RevisionError(
                f"token cap reached: {self.budget.spent} of max_tokens {self.budget.limit} "
                f"spent, and the next {self.role} request needs about {estimate}; the job "
                "stopped before a verdict. Raise max_tokens, or lower 'candidates' or the size "
                "of the golden and fresh sets"
            )
        try:
            completion = self._api.chat.completions.create(
                model=self.endpoint.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=temperature,
                max_tokens=max_tokens,
            )
        except openai.OpenAIError as failure:
            raise RevisionError(self._describe(failure)) from None
        self.calls += 1
        if completion.usage is not None:
            used = completion.usage.prompt_tokens + completion.usage.completion_tokens
            self.spent += used
            self.budget.spent += used
        content = completion.choices[0].message.content if completion.choices else None
        return content or ""

    def _describe(self, error: OpenAIError) -> str:
        """What went wrong and where, with the key masked (a server may echo it)."""
        import openai

        where = str(self._api.base_url).rstrip("/")
        what = f"the {self.role} model {self.endpoint.model} at {where}"
        if isinstance(error, openai.APIStatusError):
            hint = {
                401: f"; check the key in {self.endpoint.api_key_env}",
                403: f"; check the key in {self.endpoint.api_key_env} and its permissions",
                404: f"; check {self.role}.model and {self.role}.base_url",
            }.get(error.status_code, "")
            text = f"{what} answered HTTP {error.status_code}: {error.message}{hint}"
        elif isinstance(error, openai.APIConnectionError):
            text = f"cannot reach {what}: {error}; check {self.role}.base_url and the network"
        else:
            text = f"{what} failed: {type(error).__name__}: {error}"
        return text.replace(self._key, "***") if len(self._key) >= 4 else text
