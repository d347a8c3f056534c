"""``driftd demo``: the whole loop — drift, policy, re-tune, gate, promotion — offline, live.

``run_demo`` is the command's body (``daemon.demo.run``); the rest are its parts: the Banking77
scenario (``data``), the working folder and its configuration (``workdir``), the daemon as a
child process (``process``), jobs run by hand (``jobs``), the first model (``first``), the app's
traffic (``traffic``), the admin API reads (``observe``), the daemon in the demo's hands while it
runs (``harness``) and the live screen (``view``).
"""

from daemon.demo.run import DemoOptions, run_demo
from daemon.errors import DemoError

__all__ = ["DemoError", "DemoOptions", "run_demo"]
