"""Running a check: the daemon's half of drift detection.

It reads the current window and the reference from the store (or a file), each a capped,
reproducible draw; computes the embeddings the drawn samples lack and caches them; hands plain
frames to ``monitors``; and records the result, its Evidently snapshot and an audit event.
``monitors``, pandas, Evidently and torch are imported only when a check runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from daemon.config.models import AfterPromotion, Config, Deployment, ReferenceKind, Signal
from daemon.domain import CheckStatus
from daemon.errors import DriftdError
from daemon.store import NewCheck, NewSample, Sample, Store, Version

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from monitors import CheckResult

log = logging.getLogger("driftd.checks")


class Encoder(Protocol):
    """What a check needs of an embedder (``monitors.embed.Embedder`` in production)."""

    @property
    def name(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Drawn:
    """One side of a check: the samples drawn, how many the window held, and where from."""

    samples: Sequence[Sample | NewSample]
    total: int
    kind: ReferenceKind | None  # what a reference is; None for the current window
    start: datetime | None = None
    end: datetime | None = None
    reason: str | None = None  # why a side is empty, when it is
    current_from: datetime | None = None
    """A version's baseline: the current window starts here at the earliest (after it)."""


@dataclass(frozen=True)
class CheckOutcome:
    check_id: int
    result: CheckResult
    current: Drawn
    reference: Drawn
    snapshot_path: Path | None
    error: str | None = None
    embedded: int = 0
    """Embeddings this check computed itself (0 when its draws were all cached: warm)."""


class Checker:
    """Runs checks for the deployments of ``config`` against ``store``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        encoder_factory: Callable[[str], Encoder] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._encoder_factory = encoder_factory or _default_encoder
        self._encoders: dict[str, Encoder] = {}
        self._embedded = 0  # embeddings computed by the check running now

    def run(
        self,
        deployment: str,
        *,
        now: datetime | None = None,
        window: timedelta | None = None,
        reference_file: Path | None = None,
        reference_columns: Mapping[str, str] | None = None,
        scheduled_for: datetime | None = None,
    ) -> CheckOutcome:
        """Check ``deployment`` now: current window ending at ``now`` against its reference
        (or ``reference_file``, its columns mapped field → column by ``reference_columns``).
        The result is stored whatever it is, ``failed`` included."""
        target = self.config.deployment(deployment)
        monitor = target.monitor
        end = now or datetime.now(UTC)
        length = window or monitor.window
        start = end - length
        started = datetime.now(UTC)
        seed = draw_seed(deployment, length)
        unreadable = None
        self._embedded = 0
        try:
            reference = self._reference(
                target, start, length, seed, reference_file, reference_columns or {}
            )
        except DriftdError as exc:
            # A reference that cannot be read (a file of other columns, say) fails the check,
            # recorded like any failed one, from the scheduler and the command line alike.
            unreadable = str(exc)
            kind = ReferenceKind.dataset if reference_file is not None else monitor.reference.kind
            reference = Drawn([], 0, kind, reason=unreadable)
        if reference.current_from is not None:
            # Judged against a version's baseline: only what that version served since counts.
            start = min(max(start, reference.current_from), end)
        current_window = self.store.read_window(
            deployment, start, end, max_rows=monitor.max_rows, seed=seed
        )
        current = Drawn(current_window.samples, current_window.total, None, start, end)
        error = unreadable or (None if reference.samples else reference.reason)
        if unreadable is not None:
            log.error("check failed", extra={"deployment": deployment, "error": unreadable})
            result = _failed(reference, current)
        else:
            try:
                result = self._compare(target, reference, current, seed)
            except Exception as exc:
                # A check that breaks is a result too: recorded as failed, with the reason.
                log.exception("check failed", extra={"deployment": deployment})
                error = f"{type(exc).__name__}: {exc}"
                result = _failed(reference, current)
        check_id = self.store.record_check(
            deployment,
            NewCheck(
                started_at=started,
                finished_at=datetime.now(UTC),
                scheduled_for=scheduled_for,
                status=result.status,
                window_start=start,
                window_end=end,
                reference_kind=reference.kind,
                reference_start=reference.start,
                reference_end=reference.end,
                current_rows=len(current.samples),
                reference_rows=len(reference.samples),
                current_total=current.total,
                reference_total=reference.total,
                signals={k: v for k, v in result.to_dict().items() if k != "snapshot"},
                error=error,
            ),
        )
        snapshot_path = self._save_snapshot(deployment, check_id, result)
        drifted = {s.name: s.score for s in result.signals if s.drifted}
        self.store.add_event(
            deployment,
            "check.completed",
            f"check {check_id}: {result.status}",
            {"check_id": check_id, "status": result.status, "drifted": drifted},
        )
        return CheckOutcome(
            check_id, result, current, reference, snapshot_path, error, self._embedded
        )

    def _reference(
        self,
        target: Deployment,
        start: datetime,
        length: timedelta,
        seed: int,
        reference_file: Path | None,
        reference_columns: Mapping[str, str],
    ) -> Drawn:
        spec = target.monitor.reference
        cap = target.monitor.max_rows
        if reference_file is not None:
            return self._from_file(target, reference_file, reference_columns, cap, seed)
        version = self.store.active_version(target.name)
        if spec.kind is ReferenceKind.baseline or _made_by_driftd(version, spec.after_promotion):
            if version is None or version.promoted_at is None:
                return Drawn(
                    [], 0, ReferenceKind.baseline, reason="the deployment has no active version yet"
                )
            return self._baseline(target, version, start + length, seed)
        if spec.kind is ReferenceKind.dataset:
            assert spec.path is not None
            return self._from_file(target, spec.path, spec.columns, cap, seed)
        if spec.kind is ReferenceKind.fixed:
            assert spec.start is not None
            assert spec.end is not None
            ref_start, ref_end = spec.start, spec.end
        else:
            ref_start, ref_end = start - length, start
        drawn = self.store.read_window(target.name, ref_start, ref_end, max_rows=cap, seed=seed)
        return Drawn(drawn.samples, drawn.total, spec.kind, ref_start, ref_end)

    def _baseline(self, target: Deployment, version: Version, until: datetime, seed: int) -> Drawn:
        """The first ``samples`` samples ``version`` served from its promotion on, once it has
        served that many; until then none, with the reason. The current window starts after
        them, so the baseline is never compared with itself."""
        assert version.promoted_at is not None
        wanted = target.monitor.reference.samples
        since = version.promoted_at
        samples = self.store.first_samples(target.name, since, until, wanted)
        if len(samples) < wanted:
            reason = (
                f"collecting the baseline of version {version.name}: {len(samples)} of "
                f"{wanted} samples since its promotion at {since.isoformat(timespec='seconds')}"
            )
            return Drawn(
                [], len(samples), ReferenceKind.baseline, since, reason=reason, current_from=since
            )
        # Times are stored to the microsecond: the window starts just after the baseline's
        # last sample (another sample stamped that very microsecond counts in neither).
        after = samples[-1].ts + timedelta(microseconds=1)
        cap = target.monitor.max_rows
        if len(samples) > cap:  # the same reproducible draw as a window's
            picked = random.Random(seed).sample(samples, cap)  # noqa: S311 - a draw, not a secret
            samples = sorted(picked, key=lambda sample: (sample.ts, sample.id))
        return Drawn(samples, wanted, ReferenceKind.baseline, since, after, current_from=after)

    def _from_file(
        self, target: Deployment, path: Path, columns: Mapping[str, str], cap: int, seed: int
    ) -> Drawn:
        """A reference data set, its columns mapped field → column as ``driftd ingest --map``
        maps them, through the same checks, redaction and descriptors as ingest."""
        from daemon.errors import BackfillError
        from daemon.ingest.backfill import file_format, read_rows
        from daemon.ingest.pipeline import DeploymentPipeline
        from daemon.ingest.schema import SampleIn

        try:
            rows = list(read_rows(path, file_format(path, None), columns))
        except BackfillError as exc:
            raise DriftdError(f"reference {path}: {exc}") from None
        items = []
        for row in rows:
            try:
                items.append(SampleIn.model_validate(row.values))
            except ValueError as exc:
                raise DriftdError(f"reference {path}: {row.where}: {exc}") from None
        # The same reproducible draw as a window's, so a reference file of any size costs O(cap).
        if len(items) > cap:
            items = random.Random(seed).sample(items, cap)  # noqa: S311 - a draw, not a secret
        prepared = DeploymentPipeline(target).prepare(items, datetime.now(UTC))
        return Drawn(prepared.samples, len(rows), ReferenceKind.dataset)

    def _compare(self, target: Deployment, reference: Drawn, current: Drawn, seed: int) -> Any:
        from monitors import MonitorSpec, Side, run_check

        monitor = target.monitor
        signals = tuple(s.value for s in target.signals)
        ref_embeddings = cur_embeddings = None
        enough = min(len(reference.samples), len(current.samples)) >= monitor.min_rows
        if Signal.embedding in target.signals and enough:
            encoder = self._encoder(monitor.embedding_model)
            ref_embeddings = self._embeddings(encoder, reference.samples)
            cur_embeddings = self._embeddings(encoder, current.samples)
        spec = MonitorSpec(
            task=target.task.value,
            signals=signals,
            thresholds={k.value: v for k, v in monitor.thresholds.items()},
            min_rows=monitor.min_rows,
            quality_drop=monitor.quality_drop,
            text_max_rows=monitor.text_max_rows,
            embedding_method=monitor.embedding_method,
            labels=target.labels,
            seed=seed,
        )
        return run_check(
            Side(frame(reference.samples), ref_embeddings, reference.total),
            Side(frame(current.samples), cur_embeddings, current.total),
            spec,
        )

    def encoder(self, model: str) -> Encoder:
        """The encoder of ``model`` this checker uses (one per model, loaded on first use)."""
        return self._encoder(model)

    def _encoder(self, model: str) -> Encoder:
        if model not in self._encoders:
            self._encoders[model] = self._encoder_factory(model)
        return self._encoders[model]

    def _embeddings(self, encoder: Encoder, samples: Sequence[Sample | NewSample]) -> np.ndarray:
        """Embeddings of ``samples``: cached ones read back, the others computed and cached."""
        import numpy as np

        started = time.monotonic()
        vectors: list[np.ndarray | None] = []
        missing: list[int] = []
        for i, sample in enumerate(samples):
            cached = sample.embedding if sample.embedding_model == encoder.name else None
            vectors.append(None if cached is None else np.frombuffer(cached, dtype=np.float32))
            if cached is None:
                missing.append(i)
        if missing:
            computed = encoder.encode([samples[i].input for i in missing])
            self._embedded += len(missing)
            fresh: dict[int, bytes] = {}
            for row, i in enumerate(missing):
                vectors[i] = computed[row]
                sample = samples[i]
                if isinstance(sample, Sample):
                    fresh[sample.id] = computed[row].astype(np.float32).tobytes()
            self.store.store_embeddings(encoder.name, fresh)
            log.info(
                "embeddings computed",
                extra={
                    "computed": len(missing),
                    "cached": len(samples) - len(missing),
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
        filled = [v for v in vectors if v is not None]  # every row has its vector by now
        return np.vstack(filled) if filled else np.zeros((0, 0), dtype=np.float32)

    def _save_snapshot(self, deployment: str, check_id: int, result: Any) -> Path | None:
        if not result.snapshot:
            return None
        folder = self.config.storage.snapshots / deployment
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"check-{check_id}.json"
        path.write_text(json.dumps(result.snapshot, default=str), encoding="utf-8")
        self.store.set_snapshot_path(check_id, str(path))
        workspace = self.config.storage.evidently_workspace
        if workspace is not None:
            from monitors import export_to_workspace

            try:
                export_to_workspace(
                    json.loads(path.read_text(encoding="utf-8")),
                    workspace,
                    deployment,
                    run_name=f"check {check_id}",
                )
            except Exception:  # the check stands; its copy in Evidently's UI is a convenience
                log.exception(
                    "could not add the check's snapshot to the Evidently workspace",
                    extra={"deployment": deployment, "workspace": str(workspace)},
                )
        return path


def frame(samples: Sequence[Sample | NewSample]) -> pd.DataFrame:
    """The monitors' view of samples: one row each, descriptors as flat columns."""
    import pandas as pd

    rows = []
    for s in samples:
        row: dict[str, Any] = {
            "input": s.input,
            "output": s.output,
            "prediction": s.prediction,
            "confidence": _number(s.confidence),
            "label": s.label,
            "judge_score": _number(s.judge_score),
            "feedback_score": _number(s.feedback_score),
            "error": s.error is not None,
            "latency_ms": _number(s.latency_ms),
        }
        for side, values in (s.descriptors or {}).items():
            for key, value in values.items():
                row[f"{side}_{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def draw_seed(deployment: str, length: timedelta) -> int:
    """The draw's seed, from the deployment and the window's length (not its start).

    The same window always draws the same rows. And as a window slides, a row keeps its place
    in the draw order, so consecutive checks draw mostly the same rows: a scheduled check embeds
    only the rows new to its draw, the previous window's reference reuses what that window drew
    as current, and the embedding cache pays for itself.
    """
    key = f"{deployment}\x00{int(length.total_seconds())}"
    digest = hashlib.blake2b(key.encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "big")


def _made_by_driftd(version: Version | None, after_promotion: AfterPromotion) -> bool:
    """Whether checks follow ``version`` to its baseline: one a re-tune or a prompt revision
    made (it has a parent or a job), unless the configuration keeps its reference. A version
    registered without either (the first one, and a rollback to it) was built for the
    configured reference."""
    if after_promotion is AfterPromotion.keep or version is None:
        return False
    return version.parent_id is not None or version.job_id is not None


def _default_encoder(model: str) -> Encoder:
    from monitors.encoders import LazyEmbedder

    return LazyEmbedder(model)


def _failed(reference: Drawn, current: Drawn) -> Any:
    from monitors import CheckResult

    return CheckResult(
        status=CheckStatus.failed.value,
        signals=[],
        timings={},
        reference_rows=len(reference.samples),
        current_rows=len(current.samples),
    )
