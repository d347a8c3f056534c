"""Scheduled work on the leader: the lease, the clock, the check workers and what ticks do."""

from daemon.scheduler.leader import Leadership, new_owner
from daemon.scheduler.pool import CheckDone, CheckPool
from daemon.scheduler.scheduler import Scheduler, Tick

__all__ = [
    "CheckDone",
    "CheckPool",
    "Leadership",
    "Scheduler",
    "Tick",
    "new_owner",
]
