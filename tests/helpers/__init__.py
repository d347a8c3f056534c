"""What many tests need, written once: waiting on an observable event (``wait``), ``driftd
serve`` as a child process (``serve``), the smallest configuration that runs (``configs``) and a
stored check record (``checks``). Import them as ``from tests.helpers.wait import wait_for``."""
