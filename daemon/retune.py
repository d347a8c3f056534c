"""The daemon's half of a re-tune: what the job gets to work with.

A re-tune job (``python -m retrain retrain``) never reads the store: the daemon exports what it
needs when the job is created — the labelled production samples of the look-back period, with
their ids for lineage — and writes a spec that names them, the original training data, the golden
set, the model to start from and the champion to beat. A retried job reuses the same export, so
every attempt trains on the same data.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from daemon.config import Config
from daemon.config.models import Deployment, Method, Provider
from daemon.config.types import format_duration
from daemon.errors import DriftdError
from daemon.store import Store
from daemon.store.models import Deployment as DeploymentRow
from daemon.store.models import Sample

PRODUCTION_FILE = "production.jsonl"


class NotEnoughLabels(DriftdError):
    """Too few labelled production samples to re-tune on; the job is not created."""


def method_of(deployment: Deployment) -> Method:
    """How ``deployment`` is re-tuned: its configured method, else the natural one."""
    if deployment.retune.method is not None:
        return deployment.retune.method
    if deployment.prompt is not None:
        return Method.prompt_revision
    if deployment.model is not None and deployment.model.provider is Provider.openai:
        return Method.openai
    return Method.trainer


def labelled_samples(
    store: Store, deployment: Deployment, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """The newest ``limit`` labelled samples of the look-back period, oldest first."""
    since = now - deployment.retune.data.lookback
    with store.session(readonly=True) as session:
        rows = session.execute(
            select(Sample.id, Sample.input, Sample.label, Sample.output, Sample.ts)
            .join(DeploymentRow, DeploymentRow.id == Sample.deployment_id)
            .where(
                DeploymentRow.name == deployment.name,
                Sample.ts >= since,
                Sample.ts <= now,
                Sample.label.is_not(None),
            )
            .order_by(Sample.ts.desc(), Sample.id.desc())
            .limit(limit)
        ).all()
    return [
        {"sample_id": row.id, "input": row.input, "label": row.label, "output": row.output}
        for row in reversed(rows)
    ]


def retune_spec(
    config: Config,
    store: Store,
    deployment: Deployment,
    *,
    trigger: str,
    lineage: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Export the training inputs of a re-tune of ``deployment`` and return the job's spec.

    ``NotEnoughLabels`` when fewer than ``retune.data.min_labelled`` labelled samples exist.
    """
    when = now or datetime.now(UTC)
    retune = deployment.retune
    data = retune.data
    rows = labelled_samples(store, deployment, when, data.max_rows)
    if len(rows) < data.min_labelled:
        raise NotEnoughLabels(
            f"deployment {deployment.name!r} has {len(rows)} labelled samples in the last "
            f"{format_duration(data.lookback)}; retune.data.min_labelled is "
            f"{data.min_labelled}: send labels through the feedback API, or lower min_labelled"
        )
    inputs = (
        config.scheduling.jobs_dir.resolve()
        / "inputs"
        / (f"{deployment.name}-{when:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
    )
    inputs.mkdir(parents=True, exist_ok=True)
    production = inputs / PRODUCTION_FILE
    production.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    name = f"{deployment.name}-{when:%Y%m%d-%H%M%S}"
    active = store.active_version(deployment.name)
    configured = deployment.model.name if deployment.model is not None else None
    champion = _local_or_hub(active.artifact if active is not None else configured)
    method = method_of(deployment)
    spec: dict[str, Any] = {
        "deployment": deployment.name,
        "trigger": trigger,
        "method": method.value,
        "task": deployment.task.value,
        "labels": list(deployment.labels),
        "base_model": champion,
        "champion": None if champion is None else {"model_dir": champion},
        "champion_version": None if active is None else active.name,
        "production_file": str(production),
        "original_file": absolute_path(data.training_data),
        "original_input_field": data.input_field,
        "original_label_field": data.label_field,
        **golden_set_keys(deployment),
        "data": {
            "production_ratio": data.production_ratio,
            "max_rows": data.max_rows,
            "validation_share": data.validation_share,
        },
        "trainer": retune.trainer.model_dump(mode="json"),
        "gate": retune.gate.model_dump(mode="json"),
        "seed": job_seed(name),
        "candidate": {"name": name},
        "promote": True,
        "lineage": {**lineage, "base_version": None if active is None else active.name},
        "created_at": when.isoformat(),
    }
    if method is Method.openai:
        upstream = deployment.upstream
        spec["openai"] = {
            # OpenAI fine-tunes a fine-tuned model further: the champion is the base.
            "base_model": champion,
            "base_url": upstream.base_url,
            "api_key_env": upstream.api_key_env,
            "suffix": deployment.name[:18],
            "max_retries": upstream.max_retries,
            "timeout_s": retune.timeout.total_seconds(),
        }
        spec["base_model"] = None
        spec["champion"] = None
    return spec


def job_seed(name: str) -> int:
    """The job's seed (data split, training), from the candidate's name: recorded, repeatable."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") % 2**31


def golden_set_keys(deployment: Deployment) -> dict[str, str | None]:
    """The spec keys that name the golden set and its columns, for the jobs that score on it
    (``retrain retrain`` and ``revise_prompt`` read the same keys)."""
    golden = deployment.retune.golden_set
    if golden is None:
        return {"golden_set": None}
    return {
        "golden_set": absolute_path(golden.path),
        "golden_input_field": golden.columns.input,
        "golden_label_field": golden.columns.label,
    }


def absolute_path(path: Path | None) -> str | None:
    """The job runs in another folder: every path it gets is absolute."""
    return None if path is None else str(path.resolve())


def _local_or_hub(model: str | None) -> str | None:
    """A model folder made absolute; a hub id (or an OpenAI model id) as it is."""
    if model is None or not Path(model).exists():
        return model
    return str(Path(model).resolve())
