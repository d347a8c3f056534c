"""The job runner: starts queued jobs as processes, watches them, retries, times out, cancels,
and adopts the jobs of a daemon that died. ``executor`` says where processes run, ``runner``
what happens to jobs."""
