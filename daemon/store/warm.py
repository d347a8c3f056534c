"""The store's side of warm checks: which samples a window's capped draw holds that still lack an
embedding, and the embeddings the background embedder writes for them.

``Store.read_window`` draws the ``max_rows`` samples with the smallest ``(draw + seed offset)``;
``unembedded_draw`` runs that very ordering, but reads only positions and ids for the whole draw
and the texts of the drawn samples whose embedding is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, and_, bindparam, cast, func, or_, select, update

from daemon.store.models import Base, Sample
from daemon.store.repository import Store
from daemon.store.rows import DRAW_MODULUS, seed_offset
from daemon.store.statements import deployment_id_of, samples_between
from daemon.store.types import require_aware


@dataclass(frozen=True, slots=True)
class UnembeddedDraw:
    """A window's draw as it stands: the largest position it holds (``None`` while the window
    holds fewer than ``max_rows`` samples, so any new sample is drawn), and the drawn samples
    without an embedding of the model asked for, as (sample id, request id, input)."""

    bound: int | None
    missing: list[tuple[int, str, str]]


def unembedded_draw(
    store: Store,
    deployment: str,
    start: datetime,
    end: datetime,
    *,
    max_rows: int,
    seed: int,
    model: str,
) -> UnembeddedDraw:
    """The samples ``read_window`` would draw now, with the same seed and cap, that have no
    embedding computed by ``model``; and the draw's largest position."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    require_aware("start", start)
    require_aware("end", end)
    with store.session(readonly=True) as session:
        deployment_id = deployment_id_of(session.connection(), deployment)
        position = (cast(Sample.draw, BigInteger) + seed_offset(seed)) % DRAW_MODULUS
        lacking = or_(Sample.embedding_model.is_(None), Sample.embedding_model != model)
        drawn = (
            select(
                Sample.id.label("id"),
                position.label("position"),
                lacking.label("lacking"),
            )
            .where(*samples_between(deployment_id, start, end))
            .order_by(position, Sample.id)
            .limit(max_rows)
            .subquery()
        )
        rows = session.execute(select(drawn.c.id, drawn.c.position, drawn.c.lacking)).all()
        wanted = [int(r.id) for r in rows if r.lacking]
        missing: list[tuple[int, str, str]] = []
        for chunk_start in range(0, len(wanted), 1000):
            chunk = wanted[chunk_start : chunk_start + 1000]
            missing.extend(
                (int(i), str(r), str(t))
                for i, r, t in session.execute(
                    select(Sample.id, Sample.request_id, Sample.input).where(Sample.id.in_(chunk))
                )
            )
    bound = max(int(r.position) for r in rows) if len(rows) >= max_rows else None
    return UnembeddedDraw(bound, missing)


def store_embeddings_by_request(
    store: Store, deployment_id: int, model: str, embeddings: Mapping[str, bytes]
) -> int:
    """Cache embeddings computed with ``model`` for stored samples of a deployment, by request
    id: what ingest hands on knows a sample by its request id, not by its row id. A sample
    whose embedding by ``model`` is there already is left alone. Returns how many were
    written."""
    if not embeddings:
        return 0
    table = Base.metadata.tables["samples"]
    lacking = or_(table.c.embedding_model.is_(None), table.c.embedding_model != model)
    with store.session() as session:
        connection = session.connection()
        # The rows to write, read first: drivers do not all report an executemany's row count.
        wanted = [
            str(r)
            for (r,) in connection.execute(
                select(table.c.request_id).where(
                    table.c.deployment_id == deployment_id,
                    table.c.request_id.in_(list(embeddings)),
                    lacking,
                )
            )
        ]
        if wanted:
            connection.execute(
                update(table)
                .where(
                    and_(
                        table.c.deployment_id == deployment_id,
                        table.c.request_id == bindparam("rid"),
                    )
                )
                .values(embedding=bindparam("vector"), embedding_model=model),
                [{"rid": r, "vector": embeddings[r]} for r in wanted],
            )
    return len(wanted)


def count_embedded(store: Store, deployment: str, model: str) -> int:
    """How many of the deployment's samples have an embedding by ``model`` (tests, benchmarks)."""
    with store.session(readonly=True) as session:
        deployment_id = deployment_id_of(session.connection(), deployment)
        return int(
            session.execute(
                select(func.count()).where(
                    Sample.deployment_id == deployment_id, Sample.embedding_model == model
                )
            ).scalar_one()
        )
