"""What the store lets go of on a schedule: samples older than the retention period, and cached
embeddings that no check will read again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update

from daemon.store.models import Sample
from daemon.store.repository import Store


def delete_samples_before(store: Store, deployment: str, cutoff: datetime, batch: int) -> int:
    """Delete ``deployment``'s samples with ``ts < cutoff``; returns how many there were.

    One transaction per ``batch`` samples: the ingest writer waits for at most one batch's
    delete, not for the whole backlog. ``KeyError`` if the deployment is not registered.
    """
    deployment_id = store.deployment_ids()[deployment]
    deleted = 0
    while True:
        with store.session() as session:
            ids = list(
                session.scalars(
                    select(Sample.id)
                    .where(Sample.deployment_id == deployment_id, Sample.ts < cutoff)
                    .limit(batch)
                )
            )
            if ids:
                session.execute(delete(Sample).where(Sample.id.in_(ids)))
        if not ids:
            return deleted
        deleted += len(ids)


def drop_embeddings(store: Store, deployment: str, keep_model: str) -> int:
    """Drop ``deployment``'s cached embeddings made by any model but ``keep_model``; returns
    how many there were. ``KeyError`` if the deployment is not registered."""
    deployment_id = store.deployment_ids()[deployment]
    with store.session() as session:
        result = session.execute(
            update(Sample)
            .where(
                Sample.deployment_id == deployment_id,
                Sample.embedding_model.is_not(None),
                Sample.embedding_model != keep_model,
            )
            .values(embedding=None, embedding_model=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)
