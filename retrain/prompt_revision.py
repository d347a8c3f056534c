"""Job kind ``prompt_revision``: an LLM proposes revised system prompts from failing production
samples, each is scored on held-out data with the deployment's scorer, and the best is gated
against the active version.

For a ``prompted`` deployment, re-tuning means a better prompt, not new weights. The job

1. asks the proposer model ``candidates`` times, with the meta-prompt beside this module
   (``meta_prompt.md`` for classification, ``meta_prompt_generation.md`` for generation)
   filled with the active prompt and a sample of the failing examples, for a revised system
   prompt (its reply: JSON ``{"system": ...}``);
2. runs the active prompt and each candidate on the target model (the deployment's) over the
   golden set and the fresh production samples, and scores each answer with the deployment's
   scorer: for ``task: classification`` exact match with the label (whitespace stripped, case
   folded); for ``task: generation`` an LLM judge (``retrain.judge``, by way of
   ``retrain.scoring``, which every generation gate shares) scoring the answer against the
   rubric in [0, 1], shown the example's reference answer where the golden set has one. An
   answer the judge cannot score counts as 0, and the result says how many and why:
   leaving it out would let a prompt that provokes unscorable answers look better than it is;
3. gates the best candidate (highest accuracy, F1 or mean judge score) against the active version on
   those same examples, paired: ``retrain.gate.compare`` on labels, ``compare_scores`` on
   judge scores (see ``retrain.gate`` for why the interval's lower bound).

The samples used to write a prompt are not the ones used to score it: a golden or fresh row
whose input is also in ``failing_file`` is dropped before scoring, and the result says how many
were. Otherwise a proposer that copies the failures into its prompt would look better than it is.

Every call's tokens (from its answer's ``usage``), the judge's included, count against
``max_tokens``, the cap of the whole job. Before each call the job estimates its cost (prompt
characters / 4 plus the answer's cap) and stops with a ``JobError`` giving the numbers when
that would pass the cap: a scheduled job spends at most what it was allowed, and a half-scored
comparison is no verdict.

The spec is ``retrain.contract.PromptRevisionSpec``, the result ``PromptRevisionResult``. Spec keys:
``active`` ({"system", "few_shot": [{"input", "output"}], "model"}), ``task``
(``classification`` or ``generation``), ``failing_file``, ``golden_set``, ``fresh_file``
(optional), ``candidates`` (3), ``failures_shown`` (20), ``proposer`` and ``target``
(``model``, ``base_url``, ``api_key_env`` (``OPENAI_API_KEY``)), ``judge`` (generation only,
required there: the same three plus ``rubric``), ``answer_max_tokens`` (32 for a label, 300
for generation), ``max_tokens``, ``gate`` (``metric``: ``accuracy`` or ``macro_f1`` for
classification, ``judge_score`` for generation, its default there; ``margin`` (0),
``bootstrap_samples`` (1000)), ``seed`` (0), ``output_dir``, ``golden_input_field``
(``input``) and ``golden_label_field`` (``label``). The failing and fresh files are JSONL and
hold, for classification: failing ``input``, ``output``, ``label`` or ``expected``, ``why``;
fresh ``input``, ``label``. For generation: failing ``input``, ``output``, ``why`` (a wanted
answer under ``label`` or ``expected`` is shown if present); fresh ``input`` (production
inputs, unlabelled). An empty fresh file is no error. The golden set is JSONL, CSV or Parquet
(``retrain.dataset.data_rows``): its input under ``golden_input_field``; its label under
``golden_label_field`` (classification), or for generation optionally a reference answer
there, or else under ``reference`` or ``expected``. Keys come from the job's environment, never
the spec. Relative paths are read from the spec's directory. A rejection is a result (exit 0),
not a failure.

Never imports ``daemon``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Protocol

import numpy as np

from retrain import contract
from retrain.chat import Budget, Chat
from retrain.contract import PromptRevisionResult, PromptRevisionSpec
from retrain.errors import EvaluationError, RevisionError
from retrain.evaluate import Example, read_golden_set
from retrain.gate import METRICS, GateResult, compare, compare_scores
from retrain.jsonl import json_objects
from retrain.scoring import UNSCORED_SHOWN, JudgeModel, Query, read_queries

Progress = Callable[[str], None]

CLASSIFICATION, GENERATION = "classification", "generation"
TASKS = (CLASSIFICATION, GENERATION)
META_PROMPT_FILE = Path(__file__).with_name("meta_prompt.md")
META_PROMPT_GENERATION_FILE = Path(__file__).with_name("meta_prompt_generation.md")
PROPOSAL_MAX_TOKENS = 1500
"""The cap on one proposed prompt: room for a thorough prompt, not for an essay."""
MAX_SHOWN_CHARS = 500
"""How much of each failing example's text the meta-prompt shows: enough to see the pattern."""
PROPOSER_TEMPERATURE = 1.0
"""Candidates asked of one model with one prompt must differ to be worth scoring apart."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompted deployment's prompt: system prompt, few-shot pairs (input, output), model."""

    system: str
    few_shot: tuple[tuple[str, str], ...]
    model: str

    @classmethod
    def of(cls, spec: contract.PromptRevisionSpec) -> Prompt:
        """The spec's active prompt."""
        active = spec.active
        shots = tuple((shot.input, shot.output) for shot in active.few_shot)
        return cls(active.system, shots, active.model or spec.target.model)

    def as_model(self) -> contract.Prompt:
        return contract.Prompt(
            system=self.system,
            few_shot=[contract.Shot(input=given, output=answer) for given, answer in self.few_shot],
            model=self.model,
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """A production sample that failed: what the deployment answered, the right answer where
    known (always, for classification), and why it failed."""

    input: str
    output: str
    label: str | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Proposal:
    """One answer of the proposer: a system prompt, or ``error`` saying why it held none."""

    system: str | None
    error: str | None = None


def run(
    spec: PromptRevisionSpec, progress: Progress, *, environ: Mapping[str, str] | None = None
) -> PromptRevisionResult:
    """Propose, score and gate revised prompts; the job's result (see the module docstring).

    Keys are read from ``environ`` (the process environment by default) under each endpoint's
    ``api_key_env``; error messages are redacted of them."""
    environment = os.environ if environ is None else environ
    roles = [("proposer", spec.proposer), ("target", spec.target)]
    if spec.judge is not None:
        roles.append(("judge", spec.judge))
    keys = {}
    for role, endpoint in roles:
        key = environment.get(endpoint.api_key_env, "").strip()
        if not key:
            raise RevisionError(
                f"no API key for the {role}: set the environment variable "
                f"{endpoint.api_key_env} for the job ({role}.api_key_env in the spec names it)"
            )
        keys[role] = key
    generation = spec.task == GENERATION
    failures = read_failures(spec.failing_file, labelled=not generation)
    failing_inputs = {_normal(failure.input) for failure in failures}
    read: Callable[[Path, bool, str, str], Sequence[Example | Query]]
    read = _read_queries if generation else _read_labelled
    golden, dropped_golden = _disjoint(
        read(spec.golden, False, spec.golden_input_field, spec.golden_label_field),
        failing_inputs,
    )
    fresh: list[Example | Query] = []
    dropped_fresh = 0
    if spec.fresh_file is not None:
        fresh, dropped_fresh = _disjoint(
            read(spec.fresh_file, True, "input", "label"), failing_inputs
        )
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
            + f" is also in {spec.failing_file}; add examples the failures do not hold"
        )
    budget = Budget(spec.max_tokens)
    proposer = Chat(spec.proposer, keys["proposer"], "proposer", budget)
    target = Chat(spec.target, keys["target"], "target", budget)
    scorer: _Scorer
    if spec.judge is not None:
        judged = JudgeModel(spec.judge, keys["judge"], budget)
        scorer = _JudgeScorer([e for e in examples if isinstance(e, Query)], target, judged, spec)
    else:
        scorer = _LabelScorer([e for e in examples if isinstance(e, Example)], target, spec)
    try:
        proposals = _propose(spec, failures, examples, proposer, progress)
        active_prompt = Prompt.of(spec)
        active = scorer.evaluate(active_prompt, "active")
        progress(f"active: {_summary(spec.metric, active)} on {len(examples)}")
        scored: list[contract.ProposedPrompt] = []
        evaluated: list[_Evaluation | None] = []
        for number, proposal in enumerate(proposals, start=1):
            if proposal.system is None:
                scored.append(
                    contract.ProposedPrompt(index=number, system=None, error=proposal.error)
                )
                evaluated.append(None)
                continue
            prompt = Prompt(proposal.system, active_prompt.few_shot, active_prompt.model)
            evaluation = scorer.evaluate(prompt, f"candidate {number}")
            progress(f"candidate {number}: {_summary(spec.metric, evaluation)}")
            report = evaluation.report()
            scored.append(
                contract.ProposedPrompt(
                    index=number, system=proposal.system, **report.model_dump(exclude_unset=True)
                )
            )
            evaluated.append(evaluation)
    finally:
        proposer.close()
        target.close()
    usable = [i for i, evaluation in enumerate(evaluated) if evaluation is not None]
    if not usable:
        reasons = "; ".join(str(entry.error) for entry in scored)
        raise RevisionError(
            f"the proposer {spec.proposer.model} gave no usable prompt in {spec.candidates} "
            f"answers ({reasons}); check the proposer model, or raise 'candidates'"
        )
    best = max(usable, key=lambda i: scored[i].scores[spec.metric])
    best_evaluation = evaluated[best]
    assert best_evaluation is not None
    verdict = scorer.gate(active, best_evaluation)
    progress(f"gate: candidate {best + 1} {'passed' if verdict.passed else 'rejected'}")
    candidate = Prompt(str(scored[best].system), active_prompt.few_shot, active_prompt.model)
    tokens = contract.Tokens(
        used=budget.spent,
        limit=budget.limit,
        proposer=proposer.spent,
        target=target.spent,
        judge=scorer.judge_tokens,
    )
    return PromptRevisionResult(
        passed=verdict.passed,
        task=spec.task,
        candidate=candidate.as_model(),
        best=best + 1,
        gate=verdict.verdict(),
        active=active.report(),
        candidates=scored,
        tokens=tokens,
        dropped_overlaps={"golden": dropped_golden, "fresh": dropped_fresh},
        evaluated_on={"golden": len(golden), "fresh": len(fresh)},
    )


def read_failures(path: Path, *, labelled: bool = True) -> list[Failure]:
    """The failing examples of a JSONL file; ``RevisionError`` names the first bad line.

    ``labelled``: each needs its right label (classification); otherwise the label is
    optional, as a generation deployment's failures seldom come with a wanted answer."""
    failures = []
    for where, row in json_objects(path, RevisionError):
        label = row.get("label", row.get("expected"))
        if not isinstance(row.get("input"), str):
            raise RevisionError(f"{where} has no text under 'input'")
        if labelled and (not isinstance(label, str) or not label):
            raise RevisionError(
                f"{where} has no right answer: a failing example needs 'label' or "
                "'expected' (the label the deployment should have given)"
            )
        failures.append(
            Failure(
                row["input"],
                str(row.get("output") or ""),
                label if isinstance(label, str) and label else None,
                str(row.get("why") or ""),
            )
        )
    if not failures:
        raise RevisionError(
            f"failing file {path} has no examples: there is nothing to revise the prompt from"
        )
    return failures


def _read_labelled(
    path: Path, may_be_empty: bool, input_field: str, label_field: str
) -> list[Example]:
    """Classification examples: the input and the label under the columns named."""
    if may_be_empty and not path.read_text(encoding="utf-8").strip():
        return []  # no fresh production sample: the golden set scores alone
    try:
        return read_golden_set(path, input_field, label_field)
    except EvaluationError as error:
        raise RevisionError(str(error)) from None


def _read_queries(
    path: Path, may_be_empty: bool, input_field: str, label_field: str
) -> list[Query]:
    """Generation examples as ``retrain.scoring.read_queries`` reads them (the reference
    answer optional: the judge scores)."""
    return read_queries(path, may_be_empty, input_field, label_field, error=RevisionError)


def _disjoint(
    examples: Sequence[Example | Query], failing: set[str]
) -> tuple[list[Example | Query], int]:
    kept = [example for example in examples if _normal(example.input) not in failing]
    return kept, len(examples) - len(kept)


def _normal(text: str) -> str:
    return text.strip().casefold()


def _propose(
    spec: PromptRevisionSpec,
    failures: Sequence[Failure],
    examples: Sequence[Example | Query],
    proposer: Chat,
    progress: Progress,
) -> list[Proposal]:
    """One proposal per candidate asked for, in order."""
    # A seeded sample, not the first rows: the file is in time order and the first rows would
    # show one moment's failures only. numpy, as the gate's bootstrap draws its resamples.
    picked = np.random.default_rng(spec.seed).permutation(len(failures))[: spec.failures_shown]
    shown = [failures[i] for i in sorted(picked)]
    meta = _meta_prompt(spec, shown, examples)
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


def _meta_prompt(
    spec: PromptRevisionSpec, shown: Sequence[Failure], examples: Sequence[Example | Query]
) -> str:
    """The proposer's request: the task's meta-prompt filled with the active prompt and failures."""
    few_shot = "\n".join(
        f"- user: {_clip(given)}\n  assistant: {_clip(answer)}"
        for given, answer in Prompt.of(spec).few_shot
    )
    if spec.judge is not None:
        return Template(META_PROMPT_GENERATION_FILE.read_text(encoding="utf-8")).substitute(
            rubric=spec.judge.rubric,
            system=spec.active.system,
            few_shot=few_shot or "(none)",
            failures="\n".join(
                f"- message: {_clip(f.input)}\n  answered: {_clip(f.output)}"
                + (f"\n  a better answer: {_clip(f.label)}" if f.label else "")
                + (f"\n  why it failed: {_clip(f.why)}" if f.why else "")
                for f in shown
            ),
        )
    labels = {e.label for e in examples if isinstance(e, Example)}
    labels |= {f.label for f in shown if f.label}
    return Template(META_PROMPT_FILE.read_text(encoding="utf-8")).substitute(
        labels="\n".join(f"- {label}" for label in sorted(labels)),
        system=spec.active.system,
        few_shot=few_shot or "(none)",
        failures="\n".join(
            f"- message: {_clip(f.input)}\n  answered: {_clip(f.output)}\n  right label: "
            f"{f.label}" + (f"\n  why wrong: {_clip(f.why)}" if f.why else "")
            for f in shown
        ),
    )


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


def _answers(prompt: Prompt, inputs: Sequence[str], target: Chat, max_tokens: int) -> list[str]:
    """The target model's answer to each input under ``prompt``, at temperature 0: the
    active and the candidates are compared on what each prompt makes the model say, not on
    sampling noise."""
    base: list[dict[str, str]] = [{"role": "system", "content": prompt.system}]
    for given, answer in prompt.few_shot:
        base += [{"role": "user", "content": given}, {"role": "assistant", "content": answer}]
    return [target.ask([*base, {"role": "user", "content": text}], max_tokens) for text in inputs]


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_SHOWN_CHARS else flat[: MAX_SHOWN_CHARS - 1] + "…"


# Scoring: what a prompt's answers are worth, and how the best candidate is gated.


@dataclass(frozen=True, slots=True)
class _Evaluation:
    """One prompt's answers on every example, scored.

    ``labels`` (classification: the normalised answers) or ``values`` (generation: the judge's
    score per example, 0 where it gave none) are what the gate pairs up; ``unscored`` says why
    the judge could not score some answers."""

    scores: dict[str, float]
    labels: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)

    def report(self) -> contract.PromptScores:
        """Its part of the job's result: the scores, and for the judge what it missed."""
        if not self.values:
            return contract.PromptScores(scores=self.scores)
        return contract.PromptScores(
            scores=self.scores,
            unscored=len(self.unscored),
            unscored_errors=self.unscored[:UNSCORED_SHOWN],
        )


def _summary(metric: str, evaluation: _Evaluation) -> str:
    text = f"{metric} {evaluation.scores[metric]:.4f}"
    if evaluation.unscored:
        text += f" ({len(evaluation.unscored)} answers the judge could not score count as 0)"
    return text


class _Scorer(Protocol):
    @property
    def judge_tokens(self) -> int: ...

    def evaluate(self, prompt: Prompt, who: str) -> _Evaluation: ...

    def gate(self, active: _Evaluation, candidate: _Evaluation) -> GateResult: ...


class _LabelScorer:
    """Classification: exact match of the target's answer with the example's label."""

    judge_tokens = 0  # no judge: labels are matched exactly

    def __init__(self, examples: Sequence[Example], target: Chat, spec: PromptRevisionSpec) -> None:
        self.examples = examples
        self.truth = [_normal(example.label) for example in examples]
        self.target = target
        self.spec = spec

    def evaluate(self, prompt: Prompt, who: str) -> _Evaluation:
        from retrain.evaluate import score

        inputs = [example.input for example in self.examples]
        answers = _answers(prompt, inputs, self.target, self.spec.answer_cap)
        predicted = [_normal(answer) for answer in answers]
        found = score(self.truth, predicted)
        return _Evaluation({m: float(found[m]) for m in METRICS}, labels=predicted)

    def gate(self, active: _Evaluation, candidate: _Evaluation) -> GateResult:
        return compare(
            active.labels,
            candidate.labels,
            self.truth,
            metric=self.spec.metric,
            margin=self.spec.margin,
            bootstrap_samples=self.spec.bootstrap_samples,
            seed=self.spec.seed,
        )


class _JudgeScorer:
    """Generation: the judge's score of the target's answer against the rubric."""

    def __init__(
        self, queries: Sequence[Query], target: Chat, judge: JudgeModel, spec: PromptRevisionSpec
    ) -> None:
        self.queries = queries
        self.target = target
        self.judge = judge
        self.spec = spec

    @property
    def judge_tokens(self) -> int:
        return self.judge.spent

    def evaluate(self, prompt: Prompt, who: str) -> _Evaluation:
        inputs = [query.input for query in self.queries]
        answers = _answers(prompt, inputs, self.target, self.spec.answer_cap)
        values, unscored = self.judge.score_all(self.queries, answers, who)
        return _Evaluation(
            {self.spec.metric: float(np.mean(values))}, values=values, unscored=unscored
        )

    def gate(self, active: _Evaluation, candidate: _Evaluation) -> GateResult:
        return compare_scores(
            active.values,
            candidate.values,
            metric=self.spec.metric,
            margin=self.spec.margin,
            bootstrap_samples=self.spec.bootstrap_samples,
            seed=self.spec.seed,
        )
