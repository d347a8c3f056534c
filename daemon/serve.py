"""The daemon's lifecycle: start (store, migrations, deployments, writer), serve, stop.

``start`` prepares everything that can fail before a port is bound, and starts the scheduler:
every replica competes for the leader lease, and only the leader runs checks and jobs;
``serve`` runs the HTTP API until ``request_stop`` (a signal) and lets requests in flight finish;
``stop`` takes no new scheduled work, waits (bounded by ``server.shutdown_grace``) for running
checks, leaves running jobs to be adopted, releases the lease, commits what the writer still
holds and closes the store.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime, timedelta

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from daemon.api import Tokens, create_app
from daemon.config import Config
from daemon.config.models import Deployment, ExecutorKind, UpstreamAuth
from daemon.errors import NotLeading, StoreError
from daemon.ingest.pipeline import DeploymentPipeline
from daemon.ingest.prepare import PreparerPool, auto_workers, quiet_collector
from daemon.ingest.writer import Writer
from daemon.jobs.executor import Executor, LocalExecutor
from daemon.jobs.kubernetes import KubernetesExecutor
from daemon.jobs.runner import JobRunner
from daemon.metrics import DriftdMetrics, ReplicaMetrics
from daemon.notify import Notifier
from daemon.prompts import ActivePrompt as StoredPrompt
from daemon.prompts import ensure_initial, prompt_cache
from daemon.proxy import (
    ActiveModel,
    ActivePrompt,
    ModelFor,
    PromptFor,
    ProxyRecorder,
    UpstreamClient,
    proxy_router,
)
from daemon.scheduler import CheckPool, Scheduler, new_owner
from daemon.scheduler.actions import Actions
from daemon.serving import VersionCache, serves_by_model_id, upstream_model, version_cache
from daemon.store import Store, mask_url, upgrade
from daemon.warm import WarmChannel, WarmFeed, warm_plans

log = logging.getLogger("driftd.serve")


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling (driftd's own handlers decide when to stop, and
    must not re-raise the signal afterwards: a SIGTERM'd driftd exits 0), plus a ready hook."""

    def __init__(self, config: uvicorn.Config, daemon: Daemon) -> None:
        super().__init__(config)
        self._daemon = daemon

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._daemon.ready()


class Daemon:
    """One driftd process: ``start`` → ``serve`` → ``stop``; ``request_stop`` is signal-safe."""

    def __init__(
        self, config: Config, tokens: Tokens, environ: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.tokens = tokens
        # The notification channels' URLs; no environ means no channel is on.
        self.environ: Mapping[str, str] = environ if environ is not None else {}
        # What this replica counts (ingest, the proxy, notifications), on a registry of its
        # own, not prometheus_client's global one: /metrics shows driftd only.
        self.replica_metrics = ReplicaMetrics(CollectorRegistry())
        self._notifier: Notifier | None = None
        self._recorder: ProxyRecorder | None = None
        self._store: Store | None = None
        self._writer: Writer | None = None
        self._preparer: PreparerPool | None = None
        self._server: _Server | None = None
        self._checks: CheckPool | None = None
        self._warm: WarmChannel | None = None
        self._runner: JobRunner | None = None
        self._scheduler: Scheduler | None = None
        self.metrics: DriftdMetrics | None = None
        self.app: FastAPI | None = None  # the served application, once started
        self._stop_reason: str | None = None
        self.owner = new_owner()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the daemon is not started")
        return self._store

    def start(self) -> None:
        storage = self.config.storage
        store = Store.open(
            storage.url,
            busy_timeout=storage.busy_timeout.total_seconds(),
            synchronous=storage.sqlite_synchronous,
        )
        try:
            migrated = upgrade(store.engine)
            for deployment in self.config.deployments:
                store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
                ensure_initial(store, deployment)  # a prompted deployment's prompt-1
            notifier = Notifier(
                store, self.config.notifications, self.environ, metrics=self.replica_metrics
            )
        except BaseException:
            store.close()
            raise
        self._store = store
        log.info(
            "store ready",
            extra={
                "store": mask_url(storage.url),
                "schema": migrated.after,
                "migrated": migrated.changed,
            },
        )
        pipelines = {}
        for deployment in self.config.deployments:
            pipelines[deployment.name] = DeploymentPipeline(deployment)
            log.info(
                "watching deployment",
                extra={
                    "deployment": deployment.name,
                    "kind": deployment.kind.value,
                    "task": deployment.task.value,
                },
            )
        if not self.tokens.ingest and not self.tokens.admin:
            log.warning(
                "no DRIFTD_INGEST_TOKENS or DRIFTD_ADMIN_TOKENS set: every write is refused (401)"
            )
        self._warn_about_the_proxy()
        limits = self.config.ingest
        workers = auto_workers() if limits.workers is None else limits.workers
        self._preparer = PreparerPool(
            workers,
            self.config.deployments,
            store.deployment_ids(),
            store.engine.dialect.name,
            limits.max_batch,
        )
        log.info("ingest workers started", extra={"workers": workers})
        plans = warm_plans(self.config, store.deployment_ids())
        if plans:
            self._warm = WarmChannel(plans, self.config.scheduling.warm_queue)
            self.replica_metrics.bind_warmed(self._warm.warmed_counts)
            log.info(
                "warm checks on",
                extra={"deployments": [p.deployment for p in plans]},
            )
        self._writer = Writer(
            store,
            queue_batches=limits.queue_batches,
            commit_rows=limits.commit_rows,
            on_commit=None
            if self._warm is None
            else WarmFeed(self._warm, self.replica_metrics).offer,
        )
        self._writer.start()
        self._notifier = notifier
        notifier.start()
        self.metrics = DriftdMetrics(
            self.replica_metrics,
            config=self.config,
            store=store,
            writer=self._writer,
            is_leader=self._leads,
        )
        self._start_scheduling(store, self.metrics)
        app = create_app(
            store=store,
            writer=self._writer,
            preparer=self._preparer,
            pipelines=pipelines,
            tokens=self.tokens,
            limits=limits,
            stats=self.replica_metrics,
            leader=self._leads,
            hooks={d.name: d.retune.hooks for d in self.config.deployments},
            metrics=self.metrics,
            metrics_auth=self.config.server.metrics_auth,
            run_check=self._check_now,
            by_model_id=[d.name for d in self.config.deployments if serves_by_model_id(d)],
        )
        proxy = self.config.proxy
        self._recorder = ProxyRecorder(
            self.config.deployments,
            self._writer,
            self.replica_metrics,
            capacity=proxy.recorder_capacity,
        )
        self._recorder.start()
        router = proxy_router(
            self.config.deployments,
            self._recorder,
            client=UpstreamClient(
                max_connections=proxy.max_connections,
                keepalive_expiry=proxy.keepalive.total_seconds(),
            ),
            environ=self.environ,
            prompt_for=proxy_prompt_for(store),
            model_for=proxy_model_for(self.config.deployments, version_cache(store)),
            tokens=self.tokens,
            limits=proxy,
        )
        app.include_router(router)
        self.app = app
        server = self.config.server
        self._server = _Server(
            uvicorn.Config(
                # Proxied calls are served ahead of FastAPI; the rest goes on to the app.
                router.fast_path(app),
                host=server.host,
                port=server.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=int(server.shutdown_grace.total_seconds()),
            ),
            self,
        )

    def _warn_about_the_proxy(self) -> None:
        """Say at start what would otherwise surprise at the first proxied call: an open
        deployment, a missing upstream key, no token that may call."""
        proxied = [d for d in self.config.deployments if d.proxied]
        for deployment in proxied:
            upstream = deployment.upstream
            if upstream.auth is UpstreamAuth.passthrough_anonymous:
                log.warning(
                    "ANONYMOUS PROXY: anyone who reaches this port may call the upstream of "
                    "this deployment with their own key and write its samples "
                    "(upstream.auth: passthrough_anonymous)",
                    extra={"deployment": deployment.name},
                )
            elif upstream.auth is UpstreamAuth.key and not self.environ.get(upstream.api_key_env):
                log.warning(
                    "the upstream key is not set: proxied calls answer 503 until it is",
                    extra={"deployment": deployment.name, "variable": upstream.api_key_env},
                )
        if proxied and not self.tokens.proxy and not self.tokens.admin:
            log.warning(
                "no DRIFTD_PROXY_TOKENS or DRIFTD_ADMIN_TOKENS set: every proxied call that "
                "needs a driftd token is refused (401)"
            )

    def _start_scheduling(self, store: Store, metrics: DriftdMetrics) -> None:
        """Check workers, the job runner and the scheduler: checks run on every replica,
        leader-only work waits for the lease."""
        scheduling = self.config.scheduling
        # Before the check workers start: reaching the cluster is what fails most often.
        executor: Executor = (
            KubernetesExecutor(scheduling.kubernetes, scheduling.jobs_dir)
            if scheduling.executor is ExecutorKind.kubernetes
            else LocalExecutor()
        )
        self._checks = CheckPool(self.config, scheduling.check_workers, warm=self._warm)
        runner = JobRunner(
            store,
            executor,
            scheduling.jobs_dir,
            self.owner,
            heartbeat=scheduling.job_heartbeat,
            stale_after=scheduling.job_stale_after,
            backoff_base=scheduling.job_backoff,
            backoff_max=scheduling.job_backoff_max,
        )
        self._runner = runner
        actions = Actions(
            self.config,
            store,
            self._checks,
            owner=self.owner,
            epoch=lambda: self._epoch(),
            metrics=metrics.leader,
            follow_up="leader",
        )
        self._scheduler = Scheduler(
            self.config,
            store,
            self.owner,
            actions.work(),
            periodic={
                "jobs": (scheduling.job_poll, runner.tick),
                "settle": (scheduling.job_poll, actions.settle_jobs),
                "follow_up": (scheduling.job_poll, actions.follow_up_checks),
                **self._notification_chore(),
            },
            on_gain=lambda epoch: runner.recover(),
            warm_up=self._checks.wait_ready,
            metrics=metrics.leader,
            check_slots=scheduling.check_workers,
        )
        self._scheduler.start()
        log.info(
            "scheduler started",
            extra={"owner": self.owner, "lease_ttl": scheduling.lease_ttl.total_seconds()},
        )

    def _notification_chore(self) -> dict[str, tuple[timedelta, Callable[[], object]]]:
        notifier = self._notifier
        if notifier is None:
            return {}
        return {"notifications": (self.config.notifications.poll, notifier.process)}

    def _check_now(self, deployment: str) -> datetime:
        scheduler = self._scheduler
        if scheduler is None:
            raise NotLeading("the scheduler is not running")
        return scheduler.run_now(deployment).scheduled_for

    def _epoch(self) -> int | None:
        scheduler = self._scheduler
        return None if scheduler is None else scheduler.epoch

    def _leads(self) -> bool:
        scheduler = self._scheduler
        return scheduler is not None and scheduler.leadership.is_leader()

    def ready(self) -> None:
        quiet_collector()
        server = self.config.server
        log.info(
            "driftd ready",
            extra={
                "deployments": len(self.config.deployments),
                "host": server.host,
                "port": server.port,
            },
        )

    def serve(self) -> None:
        """Serve the API until ``request_stop``; raises SystemExit if the port cannot be bound."""
        if self._server is None:
            raise RuntimeError("start the daemon before serving")
        if self._stop_reason is None:
            self._server.run()

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the daemon to stop; safe to call from a signal handler or another thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        log.info("driftd stopping", extra={"reason": self._stop_reason or "requested"})
        if self._scheduler is not None:
            self._scheduler.stop(self.config.server.shutdown_grace)
            self._scheduler = None
        if self._notifier is not None:
            self._notifier.stop(self.config.server.shutdown_grace)
            self._notifier = None
        if self._runner is not None:
            self._runner.shutdown()  # running jobs stay running, to be adopted
            self._runner = None
        if self._checks is not None:
            self._checks.close()
            self._checks = None
        if self._preparer is not None:
            self._preparer.close()
            self._preparer = None
        if self._recorder is not None:
            self._recorder.stop()
            self._recorder = None
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._warm is not None:
            self._warm.close()
            self._warm = None
        if self._store is not None:
            self._store.close()
            self._store = None
        log.info("driftd stopped")


def proxy_prompt_for(store: Store) -> PromptFor:
    """What the proxy injects into each chat call of a prompted deployment: its active prompt
    version (read through the prompt cache, a few seconds old at most). The proxy's form of a
    version is made once, not on every call."""
    cache = prompt_cache(store)
    made: dict[str, tuple[StoredPrompt, ActivePrompt]] = {}

    def prompt_for(deployment: str) -> ActivePrompt | None:
        prompt = cache.get(deployment)
        if prompt is None:
            return None
        known = made.get(deployment)
        if known is not None and known[0] is prompt:
            return known[1]
        examples = tuple((example.input, example.output) for example in prompt.few_shot)
        active = ActivePrompt(prompt.version, prompt.model, prompt.system, examples)
        made[deployment] = (prompt, active)
        return active

    return prompt_for


def proxy_model_for(deployments: Sequence[Deployment], cache: VersionCache) -> ModelFor:
    """What the proxy calls for each of ``deployments`` served by model id: the active model
    version (read through ``cache``); None for every other deployment, and before any version
    is promoted. It never fails a user's call: when the store cannot be read and ``cache``
    knows nothing yet, the call goes as the app sent it (and the log says why)."""
    by_id = frozenset(d.name for d in deployments if serves_by_model_id(d))

    def model_for(deployment: str) -> ActiveModel | None:
        if deployment not in by_id:
            return None
        try:
            version = cache.get(deployment)
        except StoreError as error:
            log.warning(
                "the active model version cannot be read; the call goes as the app sent it",
                extra={"deployment": deployment, "error": str(error)},
            )
            return None
        model = upstream_model(version)
        return None if version is None or model is None else ActiveModel(version.version, model)

    return model_for
