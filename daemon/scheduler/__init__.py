"""Scheduled work on the leader: the lease, the clock, the check workers and what ticks do."""

from daemon.scheduler.leader import Leadership, new_owner
from daemon.scheduler.pool import CheckDone, CheckPool, CheckTimeout
from daemon.scheduler.scheduler import NotLeading, Scheduler, Tick

__all__ = [
    "CheckDone",
    "CheckPool",
    "CheckTimeout",
    "Leadership",
    "NotLeading",
    "Scheduler",
    "Tick",
    "new_owner",
]
