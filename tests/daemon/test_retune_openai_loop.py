"""The loop of a model fine-tuned through the OpenAI API, unattended, through ``driftd serve``.

Three deployments of one Banking77 intent classifier, served by ``gpt-4o-mini`` behind driftd's
proxy; the upstream is the scripted OpenAI-compatible server of ``tests/fake_openai.py``, spoken
to by the real ``openai`` client (the job's and the proxy's). The base model answers the three
intents it knows and calls the two new ones ``card_arrival``; traffic shifts toward the new ones,
agents' labels follow each call, and every deployment's policy starts a ``finetune`` job:

- ``good``: its fine-tuned model knows every intent; the gate passes it on the golden set, the
  leader promotes it, the very next proxied call goes to the new model id, and a scheduled
  check watches it against the base model on live traffic;
- ``worse``: its fine-tuned model answers ``exchange_rate`` to everything; the gate rejects it
  and the base model keeps serving;
- ``capped``: the gate's token cap is too small for the golden set; the job fails, saying so,
  without a retry that would pay for another fine-tune, and nothing is promoted.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from daemon.demo.data import by_intent, write_jsonl
from daemon.domain import JobState, VersionKind
from daemon.store import Job, Store, Version, upgrade, versions
from daemon.store import jobs as job_store
from tests.fake_openai import CHAT_ROUTE, ORGANIZATION, FakeOpenAI, serve_fake_openai
from tests.helpers.serve import running, start_driftd

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "banking77" / "data"
KNOWN = ["card_arrival", "exchange_rate", "pin_blocked"]
UNSEEN = ["lost_or_stolen_card", "top_up_failed"]
LABELS = KNOWN + UNSEEN
BASE = "gpt-4o-mini-2024-07-18"
INGEST, PROXY = "e2e-ingest-token", "e2e-proxy-token"
DEPLOYMENTS = ("good", "worse", "capped")

TRAIN, TEST = by_intent(DATA / "train.csv", LABELS), by_intent(DATA / "test.csv", LABELS)
TRUTH = {text: label for rows in (TRAIN, TEST) for label, texts in rows.items() for text in texts}


def tuned(deployment: str) -> str:
    """The prefix of the model id the fake's fine-tuning job gives ``deployment``'s fine-tune."""
    return f"ft:{BASE}:{ORGANIZATION}:{deployment}:"


def script(fake: FakeOpenAI) -> None:
    fake.script_model(BASE, lambda text: TRUTH[text] if TRUTH.get(text) in KNOWN else KNOWN[0])
    fake.script_model(tuned("good"), lambda text: TRUTH.get(text, KNOWN[0]))
    fake.script_model(tuned("worse"), lambda text: "exchange_rate")
    fake.script_model(tuned("capped"), lambda text: TRUTH.get(text, KNOWN[0]))


def write_config(folder: Path, fake: FakeOpenAI) -> None:
    blocks = []
    for name in DEPLOYMENTS:
        cap = "      gate: {metric: accuracy, margin: 0.05, bootstrap_samples: 500%s}\n" % (
            ", max_tokens: 300" if name == "capped" else ""
        )
        blocks.append(
            f"""\
  - name: {name}
    kind: finetuned
    task: classification
    model: {{name: {BASE}, provider: openai}}
    labels: [{", ".join(LABELS)}]
    upstream: {{base_url: "{fake.base_url}", api_key_env: OPENAI_API_KEY}}
    monitor: {{schedule: every 3s, window: 1h, min_rows: 30, signals: [prediction, performance]}}
    policy: {{on_drift: retune, consecutive: 2, cooldown: 1h}}
    retune:
      golden_set: golden.jsonl
      data: {{min_labelled: 50, max_rows: 300}}
      openai: {{poll_interval: 1s}}
      watch: {{checks: 100, period: 1h, max_drop: 0.05}}
{cap}"""
        )
    (folder / "driftd.yaml").write_text(
        "scheduling: {lease_ttl: 2s, job_poll: 1s, job_heartbeat: 1s, job_stale_after: 5s, "
        "jobs_dir: jobs}\ndeployments:\n" + "".join(blocks)
    )
    golden = [{"input": t, "label": c} for c in LABELS for t in TEST[c][:6]]
    write_jsonl(folder / "golden.jsonl", golden)


class Traffic:
    """Live traffic through the proxy, as an app sends it: each deployment asked about a mix of
    known and unseen intents, the agent's label sent at once through the feedback API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shifted = [t for c in KNOWN for t in TRAIN[c][40:70]] + [
            t for c in UNSEEN for t in TRAIN[c][:60]
        ]
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        clients = {name: proxy_client(self.url, name) for name in DEPLOYMENTS}
        texts = itertools.cycle(self.shifted)
        # (when asked, deployment, request id, label, tries): a label is sent once its call's
        # sample has had time to be stored, and again while the store does not know it yet.
        pending: list[tuple[float, str, str, str, int]] = []
        with httpx.Client(headers={"Authorization": f"Bearer {INGEST}"}) as ingest:
            for number in itertools.count():
                if self.stop.wait(0.05):
                    return
                text = next(texts)
                try:
                    for name, client in clients.items():
                        request_id = f"live-{number}"
                        client.chat.completions.create(
                            model=BASE,
                            messages=[{"role": "user", "content": text}],
                            extra_headers={"x-request-id": request_id},
                        )
                        pending.append((time.monotonic(), name, request_id, TRUTH[text], 0))
                        self.sent += 1
                    pending = self._label(ingest, pending)
                except (openai.OpenAIError, httpx.HTTPError) as error:
                    self.failures.append(str(error))
                    return

    def _label(
        self, ingest: httpx.Client, pending: list[tuple[float, str, str, str, int]]
    ) -> list[tuple[float, str, str, str, int]]:
        """Send the labels of calls made over half a second ago; those still unknown to the
        store are kept for another try (five at most)."""
        now = time.monotonic()
        due = [entry for entry in pending if now - entry[0] >= 0.5]
        kept = [entry for entry in pending if now - entry[0] < 0.5]
        for name in DEPLOYMENTS:
            mine = [entry for entry in due if entry[1] == name]
            if not mine:
                continue
            answer = ingest.post(
                f"{self.url}/v1/deployments/{name}/feedback",
                json={"feedback": [{"request_id": e[2], "label": e[3]} for e in mine]},
            )
            answer.raise_for_status()
            unknown = set(answer.json().get("unknown") or ())
            kept += [(now, *e[1:4], e[4] + 1) for e in mine if e[2] in unknown and e[4] < 5]
        return kept


def proxy_client(url: str, deployment: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/proxy/{deployment}/v1", api_key=PROXY, max_retries=0)


def ask_through_proxy(url: str, deployment: str, fake: FakeOpenAI, text: str) -> tuple[str, str]:
    """The answer to one proxied call, and the model id the upstream was asked for."""
    with proxy_client(url, deployment) as client:
        answer = client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": text}]
        )
    (model,) = [
        r.body["model"]
        for r in fake.received
        if r.route == CHAT_ROUTE and r.body["messages"][-1]["content"] == text
    ]
    return answer.choices[0].message.content or "", model


def history(url: str, deployment: str) -> None:
    """The reference hour: the known intents only, answered right by the base model (v1)."""
    start = datetime.now(UTC) - timedelta(minutes=100)
    texts = [t for c in KNOWN for t in TRAIN[c][:20]]
    headers = {"Authorization": f"Bearer {INGEST}"}
    samples = [
        {
            "request_id": f"ref-{i}",
            "ts": (start + timedelta(seconds=30 * i)).isoformat(),
            "input": text,
            "output": TRUTH[text],
            "prediction": TRUTH[text],
            "model_version": "v1",
        }
        for i, text in enumerate(texts)
    ]
    sent = httpx.post(
        f"{url}/v1/deployments/{deployment}/samples", json={"samples": samples}, headers=headers
    )
    assert sent.status_code in (200, 201, 202), sent.text
    labels = [{"request_id": s["request_id"], "label": s["prediction"]} for s in samples]
    fed = httpx.post(
        f"{url}/v1/deployments/{deployment}/feedback", json={"feedback": labels}, headers=headers
    )
    assert fed.status_code in (200, 201, 202), fed.text


@pytest.mark.postgres
def test_an_openai_fine_tune_is_gated_promoted_served_and_watched_unattended(
    stores: dict[str, str], tmp_path: Path
) -> None:
    """Both stores at once, each with its own daemon, upstream and folder: the loop waits on
    checks, polls and job start-ups, so side by side it costs little more than one."""
    for url in stores.values():  # one after the other: Alembic's context is one per process
        serving_v1(url)
    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        runs = {
            name: pool.submit(the_loop_closes, url, tmp_path / name) for name, url in stores.items()
        }
    for name, run in runs.items():
        try:
            run.result()
        except AssertionError as failed:
            raise AssertionError(f"on {name}: {failed}") from None


def serving_v1(db_url: str) -> None:
    """A migrated store where each deployment serves the base model as version v1."""
    with Store.open(db_url) as store:
        upgrade(store.engine)
        for name in DEPLOYMENTS:
            store.ensure_deployment(name, "finetuned", "classification")
            versions.add_version(store, name, kind=VersionKind.model, name="v1", artifact=BASE)
            versions.promote(store, name, "v1", actor="test")


def the_loop_closes(db_url: str, folder: Path) -> None:
    folder.mkdir()
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(serve_fake_openai(file_processing_polls=0))
        script(upstream)
        scenario(db_url, folder, upstream, stack)


def scenario(
    db_url: str, tmp_path: Path, upstream: FakeOpenAI, stack: contextlib.ExitStack
) -> None:
    write_config(tmp_path, upstream)
    environ = {
        "DRIFTD_STORAGE_URL": db_url,
        "DRIFTD_INGEST_TOKENS": INGEST,
        "DRIFTD_PROXY_TOKENS": PROXY,
        "OPENAI_API_KEY": upstream.api_key,
    }
    server = start_driftd(Path("driftd.yaml"), tmp_path, env=environ, log=tmp_path / "daemon.log")
    daemon = stack.enter_context(running(server, timeout=60, stop_within=30, exit_code=None))
    for name in DEPLOYMENTS:
        history(daemon.url, name)

    with Traffic(daemon.url) as traffic, Store.open(db_url) as store:

        def ended(name: str) -> Job | None:
            listed = job_store.list_jobs(store, deployment=name)
            done = (JobState.succeeded.value, JobState.failed.value)
            return next((job for _, job in listed if job.state in done), None)

        jobs = {
            name: daemon.wait_until(functools.partial(ended, name), 180, f"{name}'s job to end")
            for name in DEPLOYMENTS
        }
        assert not traffic.failures, traffic.failures
        for job in jobs.values():
            assert (job.kind, job.trigger) == ("finetune", "drift")

        # good: gated on the golden set, promoted, and served by the very next call.
        good = jobs["good"]
        assert good.state == JobState.succeeded.value, good.error
        assert good.result is not None
        gate = good.result["gate"]
        assert gate["passed"], gate
        assert gate["ci"][0] >= 0.05
        model = good.result["candidate"]["artifact"]
        assert model.startswith(tuned("good"))

        def promoted() -> Version | None:
            active = store.active_version("good")
            return active if active is not None and active.name != "v1" else None

        active = daemon.wait_until(promoted, 60, "the fine-tune to be promoted")
        assert active.artifact == model
        unseen = TEST[UNSEEN[0]][-1]
        answer, called = ask_through_proxy(daemon.url, "good", upstream, unseen)
        assert (called, answer) == (model, UNSEEN[0])

        # The watch compares the two model ids' live accuracy on the traffic that follows.
        def watched() -> list[str]:
            kinds = [e.kind for e in store.recent_events("good", limit=2000)]
            return [k for k in kinds if k.startswith("watch.")]

        verdicts = daemon.wait_until(watched, 90, "a check watching the promoted fine-tune")
        assert set(verdicts) == {"watch.ok"}, verdicts

        # worse: its gate rejects it, and the base model keeps serving.
        worse = jobs["worse"]
        assert worse.state == JobState.succeeded.value, worse.error
        assert worse.result is not None
        assert not worse.result["gate"]["passed"]
        assert getattr(store.active_version("worse"), "name", None) == "v1"
        assert ask_through_proxy(daemon.url, "worse", upstream, TEST[UNSEEN[1]][-1])[1] == BASE

        # capped: the gate ran out of tokens; the job failed saying so, nothing was promoted.
        capped = jobs["capped"]
        assert (capped.state, capped.attempt) == (JobState.failed.value, 1)  # not paid for twice
        assert "token cap reached" in (capped.error or ""), capped.error
        assert getattr(store.active_version("capped"), "name", None) == "v1"
        assert ask_through_proxy(daemon.url, "capped", upstream, TEST[UNSEEN[1]][-2])[1] == BASE
