"""The re-tuning lifecycle, one module per step after the policy's decision.

policy decides (``daemon.policy``) → spec built (``specs``: the data exported, the job's
``retrain.contract`` spec) → job runs (``daemon.jobs.runner``) → result settled (``settle``) →
candidate registered (``daemon.store.versions``) → promoted through hooks (``promotion``) →
watched (``watch``) → maybe rolled back (``promotion.rollback``).

The scheduler's claimed ticks (``daemon.scheduler.actions``) start each step at its time; the
leader settles succeeded jobs and watches promoted versions.
"""
