"""Scheduled work: checks on every replica; scheduled re-tuning, retention, the judge and the
embedding cache on the leader only.

APScheduler 3.x cannot share a job store between processes (two schedulers on one store both
run due jobs), and its SQLAlchemy store pickles jobs and deletes the ones it cannot unpickle. So
every replica builds the same jobs from the config into a memory store at start-up, and each run
claims a row unique on (deployment, job kind, scheduled time) before doing anything: a tick runs
at most once, even when two replicas both believe for a moment that they lead.

Without ``check_slots`` only the holder of the leader lease resumes its clock and runs every
kind. With ``check_slots`` (what ``driftd serve`` does) every replica's clock runs once its check
workers are warm: check ticks go to its ``Spread`` (``daemon.scheduler.spread``: claimed only
while a check worker is free, re-run when the replica running one dies), and every other kind
is skipped by a replica that does not lead.

Ticks sit on a fixed grid (intervals count from 2000-01-01 UTC, cron is a grid already), so that
every replica computes the same scheduled times and a new leader's ticks meet the old leader's
claims. After downtime, the latest missed tick of each job is run once on gaining the lease
(``scheduling.catch_up``), never once per missed tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import Config
from daemon.config.types import Schedule
from daemon.domain import CheckStatus
from daemon.errors import DriftdError, NotLeading
from daemon.scheduler.leader import Leadership
from daemon.scheduler.spread import Spread
from daemon.store import NewCheck, Store
from daemon.store.claims import finish_claim

if TYPE_CHECKING:
    from daemon.metrics import LeaderCounters

log = logging.getLogger("driftd.scheduler")

GRID_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
CHECK, RETUNE, RETENTION, EMBEDDINGS = "check", "retune", "retention", "embeddings"
JUDGE = "judge"
MAINTENANCE_EVERY = timedelta(hours=1)
_CATCH_UP_STEPS = 100_000


@dataclass(frozen=True, slots=True)
class Tick:
    """One scheduled run: which job, of which deployment, for which scheduled time."""

    deployment: str
    kind: str
    scheduled_for: datetime


Work = Callable[[Tick], None]


def trigger_for(schedule: Schedule, timezone: str) -> BaseTrigger:
    """The APScheduler trigger of ``schedule``, on the grid every replica shares."""
    if schedule.every is not None:
        return IntervalTrigger(
            seconds=schedule.every.total_seconds(), start_date=GRID_ANCHOR, timezone=UTC
        )
    assert schedule.cron is not None
    return CronTrigger.from_crontab(schedule.cron, timezone=timezone)


def grace_for(schedule: Schedule) -> int:
    """How late a tick may still run: an interval's length (at least 1 s, at most 10 min), or
    an hour for cron schedules (daily re-tuning that starts 20 minutes late is still wanted)."""
    if schedule.every is not None:
        return int(max(1.0, min(schedule.every.total_seconds(), 600.0)))
    return 3600


def latest_missed(
    trigger: BaseTrigger, after: datetime, now: datetime, *, steps: int = _CATCH_UP_STEPS
) -> datetime | None:
    """The last fire time of ``trigger`` in ``(after, now]``, or None if there is none."""
    if isinstance(trigger, IntervalTrigger):
        period = trigger.interval.total_seconds()
        latest = GRID_ANCHOR + timedelta(
            seconds=period * ((now - GRID_ANCHOR).total_seconds() // period)
        )
        return latest if latest > after else None
    found = None
    fire = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    for _ in range(steps):
        if fire is None or fire > now:
            break
        found = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return found


class _RunAt:
    """What APScheduler's ``run_job`` reads of a job, with the run time passed to the work."""

    def __init__(self, job: Any, run_time: datetime, work: Work, tick: Callable[..., Tick]):
        self.id = job.id
        self.misfire_grace_time = job.misfire_grace_time
        self.func = work
        self.args = (tick(scheduled_for=run_time),)
        self.kwargs: dict[str, Any] = {}
        self._name = str(job.name)

    def __str__(self) -> str:
        return self._name


class _TickExecutor(ThreadPoolExecutor):  # type: ignore[misc]  # untyped library
    """A thread pool that hands each run its scheduled time: APScheduler 3 calls job functions
    without it, and the run claim is keyed on it."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        work, make_tick = job.func, job.kwargs["tick"]

        def run() -> list[Any]:
            events: list[Any] = []
            for run_time in run_times:
                events += run_job(
                    _RunAt(job, run_time, work, make_tick),
                    job._jobstore_alias,
                    [run_time],
                    self._logger.name,
                )
            return events

        def done(future: Any) -> None:
            error = future.exception()
            if error is not None:
                self._run_job_error(job.id, error, error.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        self._pool.submit(run).add_done_callback(done)


class Scheduler:
    """The leader's clock: builds jobs from the config, runs them only while leading.

    ``work`` maps a job kind to what runs for a claimed tick (a check, a scheduled re-tune, …);
    ``periodic`` are unclaimed leader-only chores (the job runner's polling) with their period.
    ``check_slots`` runs check ticks on every replica, that many at a time (one per check
    worker); without it only the leader runs them.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        owner: str,
        work: dict[str, Work],
        *,
        periodic: dict[str, tuple[timedelta, Callable[[], object]]] | None = None,
        on_gain: Callable[[int], object] | None = None,
        warm_up: Callable[[], object] | None = None,
        metrics: LeaderCounters | None = None,
        check_slots: int | None = None,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self.store = store
        self.owner = owner
        self._work = work
        self._periodic = periodic or {}
        self._on_gain = on_gain
        self._warm_up = warm_up
        self._epoch: int | None = None
        self._running: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": _TickExecutor(max_workers=4)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        self.leadership = Leadership(
            store,
            owner,
            config.scheduling.lease_ttl.total_seconds(),
            on_gain=self._gained,
            on_loss=self._lost,
        )
        self._triggers: dict[tuple[str, str], BaseTrigger] = {}
        self._graces: dict[tuple[str, str], timedelta] = {}
        self._spread: Spread | None = None
        if check_slots is not None and CHECK in work:
            scheduling = config.scheduling
            self._spread = Spread(
                store,
                owner,
                check_slots,
                work[CHECK],
                grace=lambda tick: self._graces[(tick.deployment, tick.kind)],
                heartbeat=scheduling.job_heartbeat,
                stale_after=scheduling.job_stale_after,
                epoch=lambda: self.epoch,
                metrics=metrics,
            )
        self._build()
        # A tick APScheduler skipped (too late, or the previous run still going) is visible.
        self._scheduler.add_listener(self._missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def _build(self) -> None:
        timezone = self.config.timezone
        for deployment in self.config.deployments:
            plans: list[tuple[str, Schedule]] = [(CHECK, deployment.monitor.schedule)]
            if deployment.retune.schedule is not None:
                plans.append((RETUNE, deployment.retune.schedule))
            if deployment.judge.rubric is not None:
                plans.append((JUDGE, deployment.judge.schedule))
            plans.append((RETENTION, Schedule(every=MAINTENANCE_EVERY)))
            plans.append((EMBEDDINGS, Schedule(every=MAINTENANCE_EVERY * 6)))
            for kind, schedule in plans:
                if kind not in self._work:
                    continue
                trigger = trigger_for(schedule, timezone)
                self._triggers[(deployment.name, kind)] = trigger
                self._graces[(deployment.name, kind)] = timedelta(seconds=grace_for(schedule))
                self._scheduler.add_job(
                    self._spread.offer if kind == CHECK and self._spread else self._run,
                    trigger,
                    id=f"{kind}:{deployment.name}",
                    name=f"{kind} {deployment.name}",
                    kwargs={"tick": _ticker(deployment.name, kind)},
                    misfire_grace_time=grace_for(schedule),
                )
        for name, (every, chore) in self._periodic.items():
            self._scheduler.add_job(
                self._leader_only(name, chore),
                IntervalTrigger(seconds=every.total_seconds(), timezone=UTC),
                id=f"chore:{name}",
                name=name,
                misfire_grace_time=int(max(1, every.total_seconds())),
                kwargs={"tick": _ticker("", name)},
            )

    def _missed(self, event: JobEvent) -> None:
        kind = str(event.job_id).split(":", 1)[0]
        if kind != "chore":
            self._count(kind, "missed")

    def _count(self, kind: str, status: str) -> None:
        if self._metrics is not None:
            self._metrics.scheduler_run(kind, status)

    @property
    def epoch(self) -> int | None:
        """The lease epoch this replica leads under, or None when it does not lead."""
        return self._epoch if self.leadership.is_leader() else None

    def jobs(self) -> list[tuple[str, datetime | None]]:
        """Scheduled jobs and their next run times (None while paused)."""
        return [(job.id, job.next_run_time) for job in self._scheduler.get_jobs()]

    def start(self) -> None:
        """Start the clock paused; compete for the lease (and, with ``check_slots``, run the
        clock for checks) once ``warm_up`` is done (a replica whose check workers are still
        importing must not lead and miss its first ticks)."""
        self._scheduler.start(paused=True)
        if self._warm_up is None:
            self._warm()
            return
        warm_up = self._warm_up

        def then_lead() -> None:
            try:
                warm_up()
            except Exception:
                if self._stopping.is_set():
                    return  # stopped while warming up: the workers were stopped under it
                log.exception("warm-up failed; competing for the lease anyway")
            if not self._stopping.is_set():
                self._warm()

        threading.Thread(target=then_lead, name="driftd-warm-up", daemon=True).start()

    def _warm(self) -> None:
        if self._spread is not None:
            self._spread.start()
            self._scheduler.resume()
        self.leadership.start()

    def _gained(self, epoch: int) -> None:
        self._epoch = epoch
        if self._on_gain is not None:
            try:
                self._on_gain(epoch)
            except Exception:
                log.exception("start-up work of a new leader failed")
        if self.config.scheduling.catch_up:
            self._catch_up()
        self._scheduler.resume()

    def _lost(self) -> None:
        self._epoch = None
        if self._spread is None:
            self._scheduler.pause()

    def _catch_up(self) -> None:
        """Run once the latest tick each job missed while no replica led (downtime)."""
        now = datetime.now(UTC)
        last = self.store.last_claims()
        for (deployment, kind), trigger in self._triggers.items():
            previous = last.get((deployment, kind))
            if previous is None:
                continue  # never ran: the schedule starts now, nothing was missed
            missed = latest_missed(trigger, previous, now)
            if missed is None:
                continue
            log.info(
                "catching up a missed tick",
                extra={"deployment": deployment, "job": kind, "scheduled_for": missed.isoformat()},
            )
            tick = Tick(deployment, kind, missed)
            if kind == CHECK and self._spread is not None:
                self._spread.offer(tick)
                continue
            thread = threading.Thread(target=self._run, args=(tick,), daemon=True)
            thread.start()

    def _run(self, tick: Tick) -> None:
        lease = self.leadership.lease
        if lease is None and self._spread is not None and self._epoch is None:
            return  # a replica that does not lead runs checks only (its clock runs for them)
        if lease is None:
            # The lease lapsed by the local clock since APScheduler woke up (renewals late or
            # failing): this replica skips the tick, and says so; the next leader catches up.
            self._count(tick.kind, "missed")
            return
        if not self.store.claim_run(
            tick.deployment, tick.kind, tick.scheduled_for, self.owner, lease.epoch
        ):
            log.debug("tick already claimed", extra={"deployment": tick.deployment})
            self._count(tick.kind, "claimed_elsewhere")
            return
        current = threading.current_thread()
        self._running.add(current)
        try:
            self._work[tick.kind](tick)
            self._count(tick.kind, "ran")
        except Exception:
            self._count(tick.kind, "error")
            log.exception(
                "scheduled run failed",
                extra={"deployment": tick.deployment, "job": tick.kind},
            )
        finally:
            self._running.discard(current)
        try:
            finish_claim(self.store, tick.deployment, tick.kind, tick.scheduled_for, self.owner)
        except Exception:
            log.exception("could not mark a run finished", extra={"deployment": tick.deployment})

    def run_now(self, deployment: str, kind: str = CHECK) -> Tick:
        """Run ``kind`` of ``deployment`` at once, as a tick of its own (an operator's "check
        now"): claimed, run, recorded and counted exactly like a scheduled one. Only the leader
        runs it; a follower raises ``NotLeading``."""
        if (deployment, kind) not in self._triggers:
            raise KeyError(f"no {kind} job for deployment {deployment!r}")
        if self._stopping.is_set() or self.leadership.lease is None:
            raise NotLeading(
                "this replica does not lead, so it runs no scheduled work: send the request to "
                "the replica whose GET /healthz says leader: true"
            )
        tick = Tick(deployment, kind, datetime.now(UTC))
        threading.Thread(
            target=self._run, args=(tick,), name=f"driftd-{kind}-now", daemon=True
        ).start()
        return tick

    def _leader_only(self, name: str, chore: Callable[[], object]) -> Work:
        def run(tick: Tick) -> None:
            if not self.leadership.is_leader():
                return
            try:
                chore()
            except Exception:
                log.exception("leader chore failed", extra={"chore": name})

        return run

    def running(self) -> int:
        """How many claimed runs are in progress."""
        spread = 0 if self._spread is None else self._spread.running()
        return len(self._running) + spread

    def stop(self, grace: timedelta) -> None:
        """Take no new work, wait up to ``grace`` for running ticks, release the lease."""
        self._stopping.set()
        self._scheduler.pause()
        deadline = datetime.now(UTC) + grace
        if self._spread is not None:
            self._spread.stop(grace)
        for thread in list(self._running):
            thread.join(timeout=max(0.0, (deadline - datetime.now(UTC)).total_seconds()))
        self.leadership.stop(release_lease=True)
        self._scheduler.shutdown(wait=False)


def _ticker(deployment: str, kind: str) -> Callable[..., Tick]:
    def tick(*, scheduled_for: datetime) -> Tick:
        return Tick(deployment, kind, scheduled_for.astimezone(UTC))

    return tick


def record_failed_check(
    store: Store, deployment: str, tick: Tick, window: timedelta, error: DriftdError
) -> int:
    """A check that could not finish (timed out, its worker died) is a ``failed`` result."""
    now = datetime.now(UTC)
    return store.record_check(
        deployment,
        NewCheck(
            started_at=now,
            finished_at=now,
            scheduled_for=tick.scheduled_for,
            status=CheckStatus.failed.value,
            window_start=now - window,
            window_end=now,
            reference_kind=None,
            reference_start=None,
            reference_end=None,
            current_rows=0,
            reference_rows=0,
            current_total=0,
            reference_total=0,
            signals={"status": CheckStatus.failed.value, "signals": []},
            error=str(error),
        ),
    )


def iter_ticks(trigger: BaseTrigger, start: datetime, end: datetime) -> Iterator[datetime]:
    """Fire times of ``trigger`` in ``[start, end)``; for tests and the catch-up report."""
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < end:
        yield fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
