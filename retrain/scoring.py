"""Scoring free-text answers on a golden set, for every job that gates generation: a prompt
revision's prompts, a generation fine-tune and the model it must beat.

Two scorers, and one rule for which one a gate uses. With a judge (the deployment's rubric),
the LLM judge of ``retrain.judge`` scores each answer in [0, 1], shown the example's reference
answer where the golden set gives one; an answer it cannot score counts as 0 and is reported,
as leaving it out would let a model that provokes unscorable answers look better than it is.
Without a judge, the golden set's reference answers decide: an answer scores 1 when it is the
reference once case, runs of whitespace, surrounding quotes and final punctuation are set aside
(``normal``), else 0; a golden example without a reference then has nothing to be scored
against, and reading the set fails naming its line. Either way both models' per-example scores
go to the paired bootstrap of ``retrain.gate.compare_scores`` (metric ``judge_score`` or
``reference_match``).

The judge spends from the job's ``Budget`` (``retrain.chat``), and a cap it would pass, or a
judge the API refuses, stops the job with the budget's error: a half-scored comparison is no
verdict.

Never imports ``daemon``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrain import contract
from retrain.chat import Budget
from retrain.contract import REFERENCE_KEYS, REFERENCE_METRIC, SCORE_METRIC, Side, Verdict
from retrain.dataset import data_rows
from retrain.errors import EvaluationError, JobError
from retrain.gate import compare_scores
from retrain.judge import ClientSettings, JudgeSample, Stop, TokenBudget, judge

Progress = Callable[[str], None]

JUDGE_MAX_TOKENS = 200
"""The cap on one verdict of the judge: a score and a short reason."""
UNSCORED_SHOWN = 5
"""Reasons the judge could not score an answer, kept per model or prompt in the result."""
_SURROUNDING = "\"'`.!?,;:"


@dataclass(frozen=True, slots=True)
class Query:
    """A generation example: its input, and a reference answer for the judge where known."""

    input: str
    reference: str | None = None


def read_queries(
    path: Path,
    may_be_empty: bool,
    input_field: str,
    label_field: str,
    *,
    error: type[JobError],
    require_reference: bool = False,
) -> list[Query]:
    """Generation examples: the input under ``input_field``, and a reference answer if given,
    under ``label_field``, else ``reference`` or ``expected``. ``require_reference``: an
    example without one is an ``error`` naming its line (no judge, the references score)."""
    what = "fresh samples" if may_be_empty else "golden set"
    queries = []
    for where, row in data_rows(path, what=what, error=error):
        given = row.get(input_field)
        if not isinstance(given, str) or not given:
            raise error(f"{where} has no text under {input_field!r}")
        answers = (row.get(key) for key in (label_field, *REFERENCE_KEYS))
        reference = next((a for a in answers if isinstance(a, str) and a), None)
        if reference is None and require_reference:
            columns = ", ".join(map(repr, dict.fromkeys((label_field, *REFERENCE_KEYS))))
            raise error(
                f"{where} has no reference answer (under {columns}): with no judge rubric "
                "configured, a generation gate scores each answer against its reference; add "
                "one to every golden example, or configure judge.rubric"
            )
        queries.append(Query(given, reference))
    if not queries and not may_be_empty:
        raise error(f"golden set {path} has no examples")
    return queries


def normal(text: str) -> str:
    """``text`` as answers are compared: case folded, runs of whitespace one space, and
    surrounding quotes and final punctuation dropped (``"'Paris.'"`` is ``paris``)."""
    return " ".join(text.strip().strip(_SURROUNDING).split()).casefold()


def reference_match(answer: str, reference: str) -> float:
    """1.0 when ``answer`` is ``reference`` as ``normal`` compares them, else 0.0."""
    return 1.0 if normal(answer) == normal(reference) else 0.0


def gate_budget(max_tokens: int) -> Budget:
    """A gate's token cap, shared by the models it asks and the judge: the job fails when it
    is reached, saying what to change."""
    return Budget(
        max_tokens,
        error=EvaluationError,
        hint="Raise the gate's max_tokens (retune.gate.max_tokens), or use a smaller golden set",
    )


class JudgeModel:
    """The LLM judge (``retrain.judge``), spending from the job's token cap."""

    def __init__(self, judge: contract.Judge, key: str, budget: Budget) -> None:
        self.judge = judge
        self.budget = budget
        self.spent = 0
        self._client = ClientSettings(
            api_key=key, base_url=judge.base_url, timeout_s=60.0, max_retries=2
        )

    def score(
        self, queries: Sequence[Query], answers: Sequence[str]
    ) -> tuple[list[float], list[str]]:
        """The judge's score of each answer (0 where it gave none) and why it gave none."""
        judgement = judge(
            [
                JudgeSample(number, query.input, answer, query.reference)
                for number, (query, answer) in enumerate(zip(queries, answers, strict=True))
            ],
            rubric=self.judge.rubric,
            model=self.judge.model,
            client=self._client,
            budget=TokenBudget(self.budget.limit, self.budget.spent),
            max_tokens=JUDGE_MAX_TOKENS,
        )
        self.spent += judgement.tokens
        self.budget.spent += judgement.tokens
        if judgement.stopped is Stop.budget:
            raise self.budget.exhausted("judge", judgement.needed or JUDGE_MAX_TOKENS)
        if judgement.stopped is not None:
            raise self.budget.error(
                f"the judge ({self.judge.model}, key from "
                f"{self.judge.api_key_env}) refused: {judgement.detail}; the job "
                "stopped before a verdict"
            )
        values = [score.score if score.score is not None else 0.0 for score in judgement.scores]
        unscored = [
            f"example {int(score.sample_id) + 1}: {score.error}"
            for score in judgement.scores
            if score.score is None
        ]
        return values, unscored

    def score_all(
        self, queries: Sequence[Query], answers: Sequence[str], who: str
    ) -> tuple[list[float], list[str]]:
        """``score``, refusing a run where the judge scored none of ``who``'s answers: that
        says the judge is misconfigured, not that every answer is bad."""
        values, unscored = self.score(queries, answers)
        if values and len(unscored) == len(values):
            raise self.budget.error(
                f"the judge {self.judge.model} could score none of the "
                f"{len(values)} answers of the {who} (last: {unscored[-1]}); check judge.model "
                'and that it answers JSON {"score": <0 to 1>, "reason": ...}'
            )
        return values, unscored


@dataclass(frozen=True, slots=True)
class Scored:
    """One model's answers on the golden set, scored: a value per example, and why the judge
    could not score some of them."""

    values: list[float]
    unscored: list[str] = field(default_factory=list)


def score_answers(
    queries: Sequence[Query], answers: Sequence[str], judged: JudgeModel | None, who: str
) -> Scored:
    """Each answer's score: the judge's when there is one, else its match with the reference."""
    if judged is not None:
        values, unscored = judged.score_all(queries, answers, who)
        return Scored(values, unscored)
    missing = [number for number, query in enumerate(queries, 1) if query.reference is None]
    if missing:  # read_queries(require_reference=True) refuses such a set: a caller's bug
        raise ValueError(f"examples {missing} have no reference answer and there is no judge")
    return Scored(
        [
            reference_match(answer, str(query.reference))
            for query, answer in zip(queries, answers, strict=True)
        ]
    )


def compare_answers(
    queries: Sequence[Query],
    active: Sequence[str],
    candidate: Sequence[str],
    *,
    judged: JudgeModel | None,
    settings: contract.GateSettings,
    seed: int,
) -> Verdict:
    """The candidate's answers judged against the active version's on the same ``queries``,
    scored as the module docstring says; the verdict names the metric, the interval and what
    the judge could not score. The caller adds the models and the token counts."""
    metric = SCORE_METRIC if judged is not None else REFERENCE_METRIC
    sides = {
        who: score_answers(queries, answers, judged, who)
        for who, answers in (("active", active), ("candidate", candidate))
    }
    found = compare_scores(
        sides["active"].values,
        sides["candidate"].values,
        metric=metric,
        margin=settings.margin,
        bootstrap_samples=settings.bootstrap_samples,
        seed=seed,
    ).verdict()
    for who, scored in sides.items():
        if scored.unscored:
            shown = "; ".join(scored.unscored[:UNSCORED_SHOWN])
            found.reasons.append(
                f"the judge could not score {len(scored.unscored)} of the {who}'s "
                f"{len(scored.values)} answers, which count as 0 ({shown})"
            )
    return found


def finish_verdict(
    found: Verdict,
    active: str,
    candidate: str,
    spending: Budget,
    judged: JudgeModel | None,
    progress: Progress,
) -> Verdict:
    """``found`` with the models it compared (a folder or a model id) and what its API calls
    spent, each reason logged: the end of every gate that may call an API."""
    found.active = Side(metrics=(found.active.metrics if found.active else {}), model_dir=active)
    found.candidate = Side(
        metrics=(found.candidate.metrics if found.candidate else {}), model_dir=candidate
    )
    if spending.spent or judged is not None:
        found.tokens, found.max_tokens = spending.spent, spending.limit
        found.reasons.append(f"the gate's calls spent {spending.spent} tokens")
    if judged is not None:
        found.judge_tokens = judged.spent
        found.reasons[-1] += f", {judged.spent} of them the judge's ({judged.judge.model})"
    for reason in found.reasons:
        progress(f"gate: {reason}")
    progress(f"gate: the candidate {'passes' if found.passed else 'is rejected'}")
    return found
