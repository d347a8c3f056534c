"""The ingest API against a real store (SQLite and PostgreSQL) and the real writer thread."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from daemon.api import Tokens, create_app
from daemon.api.spec import ErrorDetail, InvalidBatch
from daemon.config import parse_config
from daemon.errors import QueueFull
from daemon.ingest.pipeline import DeploymentPipeline, sampled_in
from daemon.ingest.prepare import PreparerPool
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.store import NewSample, Sample, Store
from daemon.store.repository import RowEncoder, SampleRows

CONFIG = """\
ingest: {max_batch: 100, max_body_bytes: 65536}
deployments:
  - name: intents
    kind: finetuned
    task: classification
    model: {name: ./model}
    labels: [card_arrival, lost_card, exchange_rate]
  - name: bot
    kind: prompted
    task: generation
    prompt: {model: gpt-4o-mini, system: You help bank customers.}
    sampling: {rate: 0.5}
    descriptors:
      patterns: [{name: order_ref, pattern: 'ORD-\\d+'}]
"""
INGEST = {"Authorization": "Bearer ingest-1"}
ADMIN = {"Authorization": "Bearer admin-1"}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Api:
    def __init__(
        self, store: Store, writer: Writer, stats: ReplicaMetrics, workers: int = 0
    ) -> None:
        config = parse_config(CONFIG, environ={})
        for deployment in config.deployments:
            store.ensure_deployment(deployment.name, deployment.kind, deployment.task)
        self.store = store
        self.stats = stats
        self.pipelines = {d.name: DeploymentPipeline(d) for d in config.deployments}
        preparer = PreparerPool(
            workers,
            config.deployments,
            store.deployment_ids(),
            store.engine.dialect.name,
            config.ingest.max_batch,
        )
        self.preparer = preparer
        self.app = create_app(
            store=store,
            writer=writer,
            preparer=preparer,
            pipelines=self.pipelines,
            tokens=Tokens(ingest=(b"ingest-1", b"ingest-2"), admin=(b"admin-1",)),
            limits=config.ingest,
            stats=stats,
        )
        self.client = TestClient(self.app)

    def counted(self, name: str, **labels: str) -> float:
        """A counter of the replica's metrics, as ``/metrics`` exports it (0 if never counted)."""
        return self.stats.registry.get_sample_value(name, labels) or 0.0

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client.post(path, json=body, headers=INGEST if headers is None else headers)

    def stored(self, deployment: str) -> dict[str, Sample]:
        window = self.store.read_window(
            deployment,
            T0 - timedelta(days=3650),
            T0 + timedelta(days=3650),
            max_rows=100_000,
            seed=0,
        )
        return {s.request_id: s for s in window.samples}


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    stats = ReplicaMetrics()
    writer = Writer(store, queue_batches=8, commit_rows=1000)
    writer.start()
    try:
        yield Api(store, writer, stats)
    finally:
        writer.stop()


def intent(request_id: str, **extra: Any) -> dict[str, Any]:
    sample = {
        "request_id": request_id,
        "ts": T0.isoformat(),
        "input": "Where is my new card?",
        "prediction": "card_arrival",
        "confidence": 0.9,
    }
    return sample | extra


def test_health_and_readiness_are_open(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "leader": False}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_openapi_documents_the_bodies(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    assert "/v1/deployments/{name}/samples" in spec["paths"]
    assert "/v1/deployments/{name}/feedback" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert "request_id" in schemas["SampleIn"]["properties"]
    body = spec["paths"]["/v1/deployments/{name}/samples"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/SampleBatch")


DECLARED_BODIES: dict[str, type[BaseModel]] = {
    "ErrorDetail": ErrorDetail,
    "InvalidBatch": InvalidBatch,
}


def test_refusals_have_the_bodies_the_openapi_document_declares(api: Api) -> None:
    # The 422 of a batch once had a body other than the one documented (FastAPI's own).
    spec = api.client.get("/openapi.json").json()
    samples = "/v1/deployments/{name}/samples"
    refusals = [
        (samples, api.post("/v1/deployments/intents/samples", {"samples": []}, headers={}), 401),
        (samples, api.post("/v1/deployments/intents/samples", {"samples": [{"x": 1}]}), 422),
        (
            samples,
            api.client.post("/v1/deployments/bot/samples", content=b"{", headers=INGEST),
            400,
        ),
        ("/v1/deployments", api.client.get("/v1/deployments", headers=INGEST), 403),
    ]
    for path, response, status in refusals:
        assert response.status_code == status, response.text
        operation = spec["paths"][path]["post" if path == samples else "get"]
        declared = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        model = DECLARED_BODIES[declared["$ref"].rsplit("/", 1)[-1]]
        model.model_validate(response.json(), strict=True)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/deployments/intents/samples"),
        ("post", "/v1/deployments/intents/feedback"),
        ("post", "/v1/deployments/nowhere/samples"),
        ("get", "/v1/deployments"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic aW5nZXN0LTE="},
        {"Authorization": "Bearer"},
        {"Authorization": "ingest-1"},
    ],
)
def test_protected_routes_answer_401_without_a_valid_token(
    api: Api, method: str, path: str, headers: dict[str, str]
) -> None:
    response = api.client.request(method, path, json={"samples": []}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert api.stored("intents") == {}


def test_tokens_have_scopes(api: Api) -> None:
    assert api.client.get("/v1/deployments", headers=INGEST).status_code == 403
    assert api.client.get("/v1/deployments", headers=ADMIN).status_code == 200
    for headers in (INGEST, {"Authorization": "Bearer ingest-2"}, ADMIN):
        response = api.post("/v1/deployments/intents/samples", {"samples": []}, headers)
        assert response.status_code == 200


def test_a_batch_is_stored_redacted_and_described(api: Api) -> None:
    body = {
        "samples": [
            intent(
                "r1", input="My card 4111 1111 1111 1111 never came, mail me at a.b@example.com"
            ),
            intent("r2", output='{"intent": "card_arrival"}', label="card_arrival"),
        ]
    }
    response = api.post("/v1/deployments/intents/samples", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 2, "new": 2, "duplicate": 0, "sampled_out": 0}
    stored = api.stored("intents")
    assert stored["r1"].input == "My card <CARD> never came, mail me at <EMAIL>"
    assert stored["r1"].ts == T0
    assert stored["r2"].label == "card_arrival"
    descriptors = stored["r2"].descriptors
    assert descriptors is not None
    assert descriptors["input"]["words"] == 5
    assert descriptors["output"]["is_json"] is True
    assert api.counted("driftd_samples_redacted_total", deployment="intents", kind="card") == 1
    assert api.counted("driftd_samples_redacted_total", deployment="intents", kind="email") == 1


def test_a_batch_with_invalid_items_stores_nothing_and_names_each(api: Api) -> None:
    body = {
        "samples": [
            intent("ok-1"),
            intent("bad-1", confidence=1.5),
            intent("ok-2"),
            {"input": "no id", "prediction": "card_arrival"},
            intent("bad-3", ts="2026-11-01T12:00:00"),
            intent("bad-4", prediction="pizza"),
            intent("bad-5", metadata={f"k{i}": i for i in range(20)}),
        ]
    }
    response = api.post("/v1/deployments/intents/samples", body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["message"] == "4 of 7 items are invalid; nothing was stored"
    where = {(p["index"], p["field"]) for p in detail["problems"]}
    assert where == {(1, "confidence"), (3, "request_id"), (4, "ts"), (6, "metadata")}
    assert api.stored("intents") == {}
    # The label check runs once the schema holds, and names the item too.
    body["samples"] = [intent("ok-1"), intent("bad-4", prediction="pizza")]
    response = api.post("/v1/deployments/intents/samples", body)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]["problems"]
    assert (problem["index"], problem["field"]) == (1, "prediction")
    assert "'pizza' is not one of the deployment's labels" in problem["message"]
    assert api.stored("intents") == {}


def test_generation_deployments_take_no_predictions(api: Api) -> None:
    body = {"samples": [{"request_id": "g", "input": "hi", "output": "hello", "confidence": 0.2}]}
    response = api.post("/v1/deployments/bot/samples", body)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]["problems"]
    assert problem == {
        "index": 0,
        "field": "confidence",
        "message": "only for classification deployments",
    }


def test_re_sent_samples_are_not_stored_twice(api: Api) -> None:
    first = api.post("/v1/deployments/intents/samples", {"samples": [intent("a"), intent("b")]})
    assert first.json()["new"] == 2
    again = api.post(
        "/v1/deployments/intents/samples",
        {"samples": [intent("a"), intent("b"), intent("c"), intent("c")]},
    )
    assert again.json() == {"received": 4, "new": 1, "duplicate": 3, "sampled_out": 0}
    assert sorted(api.stored("intents")) == ["a", "b", "c"]


def test_unknown_deployment_is_404(api: Api) -> None:
    response = api.post("/v1/deployments/nowhere/samples", {"samples": [intent("a")]})
    assert response.status_code == 404
    assert "unknown deployment 'nowhere'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"samples": [', "not valid JSON"),
        (b'{"samples": []}\xff', "not valid UTF-8"),
        (b"\xc3\x28", "not valid UTF-8"),
    ],
)
def test_malformed_bodies_are_400(api: Api, body: bytes, message: str) -> None:
    response = api.client.post(
        "/v1/deployments/intents/samples",
        content=body,
        headers=INGEST | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_limits_answer_413(api: Api) -> None:
    many = {"samples": [intent(f"r{i}") for i in range(101)]}
    response = api.post("/v1/deployments/intents/samples", many)
    assert response.status_code == 413
    assert "101 samples in one batch; at most 100" in response.json()["detail"]
    big = {"samples": [intent("big", input="x" * 70_000)]}
    response = api.post("/v1/deployments/intents/samples", big)
    assert response.status_code == 413
    assert api.stored("intents") == {}


def test_a_full_write_queue_answers_429_with_retry_after(store: Store) -> None:
    class FullWriter(Writer):
        def submit(self, rows: SampleRows) -> Any:
            raise QueueFull("the write queue is full (8 batches waiting)")

    api = Api(store, FullWriter(store), ReplicaMetrics())
    response = api.post("/v1/deployments/intents/samples", {"samples": [intent("a")]})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert (
        api.counted("driftd_samples_rejected_total", deployment="intents", reason="queue_full") == 1
    )


def test_the_writer_refuses_at_once_when_its_queue_is_full(store: Store) -> None:
    store.ensure_deployment("bot", "prompted", "generation")
    writer = Writer(store, queue_batches=1)  # not started: nothing drains the queue
    encoder = RowEncoder(store.engine.dialect.name)
    bot = store.deployment_ids()["bot"]
    writer.submit(encoder.encode("bot", bot, [NewSample("a", T0)]))
    with pytest.raises(QueueFull, match="1 batches waiting"):
        writer.submit(encoder.encode("bot", bot, [NewSample("b", T0)]))


def test_sampling_is_decided_by_the_request_id(api: Api) -> None:
    ids = [f"req-{i}" for i in range(100)]
    body = {"samples": [{"request_id": rid, "input": "q", "output": "a"} for rid in ids]}
    first = api.post("/v1/deployments/bot/samples", body).json()
    expected = [rid for rid in ids if sampled_in("bot", rid, 0.5)]
    assert first["new"] == len(expected)
    assert first["sampled_out"] == 100 - len(expected)
    assert 35 <= len(expected) <= 65
    assert sorted(api.stored("bot")) == sorted(expected)
    again = api.post("/v1/deployments/bot/samples", body).json()
    assert again == {
        "received": 100,
        "new": 0,
        "duplicate": len(expected),
        "sampled_out": 100 - len(expected),
    }


def test_errors_and_negative_feedback_are_always_kept(api: Api) -> None:
    out = [rid for rid in (f"x{i}" for i in range(200)) if not sampled_in("bot", rid, 0.5)]
    body = {
        "samples": [
            {"request_id": out[0], "input": "q", "error": "upstream timeout"},
            {"request_id": out[1], "input": "q", "output": "a", "feedback": {"thumb": "down"}},
            {"request_id": out[2], "input": "q", "output": "a", "feedback": {"score": 0.1}},
            {"request_id": out[3], "input": "q", "output": "a", "feedback": {"thumb": "up"}},
        ]
    }
    response = api.post("/v1/deployments/bot/samples", body).json()
    assert response == {"received": 4, "new": 3, "duplicate": 0, "sampled_out": 1}
    stored = api.stored("bot")
    assert sorted(stored) == sorted(out[:3])
    assert stored[out[1]].feedback_score == 0.0
    assert stored[out[1]].feedback_kind == "thumb"


def test_chat_input_keeps_the_messages_and_describes_the_last_user_turn(api: Api) -> None:
    messages = [
        {"role": "system", "content": "You help bank customers."},
        {"role": "user", "content": "Hi, I am jane@example.org"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Where is order ORD-1234?"},
    ]
    ids = [rid for rid in (f"c{i}" for i in range(50)) if sampled_in("bot", rid, 0.5)]
    body = {"samples": [{"request_id": ids[0], "input": messages, "output": "On its way."}]}
    assert api.post("/v1/deployments/bot/samples", body).status_code == 200
    sample = api.stored("bot")[ids[0]]
    assert sample.input == "Where is order ORD-1234?"
    assert sample.input_messages is not None
    assert sample.input_messages[1] == {"role": "user", "content": "Hi, I am <EMAIL>"}
    assert sample.descriptors is not None
    assert sample.descriptors["input"]["regex_order_ref"] is True
    assert sample.descriptors["output"]["regex_order_ref"] is False


def test_feedback_joins_by_request_id_and_reports_the_rest(api: Api) -> None:
    kept = [rid for rid in (f"f{i}" for i in range(50)) if sampled_in("bot", rid, 0.5)]
    dropped = [rid for rid in (f"f{i}" for i in range(50)) if not sampled_in("bot", rid, 0.5)]
    body = {"samples": [{"request_id": rid, "input": "q", "output": "a"} for rid in kept[:2]]}
    api.post("/v1/deployments/bot/samples", body)
    never_sent = kept[2]
    feedback = {
        "feedback": [
            {"request_id": kept[0], "thumb": "down", "comment": "call me on +44 20 7946 0958"},
            {"request_id": kept[1], "judge_score": 0.75, "label": "good"},
            {"request_id": never_sent, "score": 0.2},
            {"request_id": dropped[0], "thumb": "up"},
        ]
    }
    response = api.post("/v1/deployments/bot/feedback", feedback)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 4,
        "updated": 2,
        "unknown": [never_sent],
        "sampled_out": [dropped[0]],
    }
    stored = api.stored("bot")
    assert (stored[kept[0]].feedback_score, stored[kept[0]].feedback_kind) == (0.0, "thumb")
    assert stored[kept[0]].feedback_comment == "call me on <PHONE>"
    assert stored[kept[1]].judge_score == 0.75
    assert stored[kept[1]].label == "good"
    assert stored[kept[1]].label_ts is not None


def test_invalid_feedback_names_the_item(api: Api) -> None:
    feedback = {"feedback": [{"request_id": "a", "thumb": "down"}, {"request_id": "b"}]}
    response = api.post("/v1/deployments/bot/feedback", feedback)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]["problems"]
    assert problem["index"] == 1
    assert "needs at least one of" in problem["message"]


def test_worker_processes_prepare_batches_like_the_server_does(store: Store) -> None:
    stats = ReplicaMetrics()
    writer = Writer(store)
    writer.start()
    try:
        api = Api(store, writer, stats, workers=1)
        body = {"samples": [intent("w1", input="mail me at w@example.com"), intent("w2")]}
        response = api.post("/v1/deployments/intents/samples", body)
        assert response.json() == {"received": 2, "new": 2, "duplicate": 0, "sampled_out": 0}
        assert api.stored("intents")["w1"].input == "mail me at <EMAIL>"
        assert api.counted("driftd_samples_redacted_total", deployment="intents", kind="email") == 1
        bad = api.post("/v1/deployments/intents/samples", {"samples": [intent("w3", confidence=7)]})
        assert bad.status_code == 422
        assert bad.json()["detail"]["problems"][0]["field"] == "confidence"
    finally:
        api.preparer.close()
        writer.stop()


# -- crafted input: refused with a 422 naming the field, never a 5xx nor stored wrong ----------


def post_raw(api: Api, path: str, body: bytes) -> Any:
    """A body as written, for JSON that ``json=`` would not produce (NaN, 1e400)."""
    return api.client.post(
        path, content=body, headers=INGEST | {"Content-Type": "application/json"}
    )


def refused(response: Any) -> list[tuple[int | None, str, str]]:
    """The problems of a 422: (index, field, message)."""
    assert response.status_code == 422, response.text
    return [(p["index"], p["field"], p["message"]) for p in response.json()["detail"]["problems"]]


@pytest.mark.parametrize(
    ("ts", "message"),
    [
        # The year 10000 in UTC: an OverflowError (500) when SQLite's row was encoded.
        ("9999-12-31T23:59:59-01:00", "Input should be less than 9999-01-01T00:00:00Z"),
        # The year 0 in UTC.
        ("0001-01-01T00:00:00+01:00", "greater than or equal to 1970-01-01T00:00:00Z"),
        ("1969-12-31T23:59:59Z", "greater than or equal to 1970-01-01T00:00:00Z"),
        ("9999-01-01T00:00:00Z", "Input should be less than 9999-01-01T00:00:00Z"),
    ],
)
def test_a_ts_outside_the_accepted_range_is_a_422(api: Api, ts: str, message: str) -> None:
    response = api.post("/v1/deployments/intents/samples", {"samples": [intent("a", ts=ts)]})

    [(index, field, said)] = refused(response)
    assert (index, field) == (0, "ts")
    assert message in said
    assert api.stored("intents") == {}


def test_the_edges_of_the_ts_range_are_stored(api: Api) -> None:
    first, last = "1970-01-01T00:00:00Z", "9998-12-31T23:59:59.999999+00:00"
    body = {"samples": [intent("first", ts=first), intent("last", ts=last)]}

    response = api.post("/v1/deployments/intents/samples", body)

    assert response.status_code == 200, response.text
    assert response.json()["new"] == 2


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tokens_in": 2**70}, "tokens_in"),
        ({"tokens_out": 2**70}, "tokens_out"),
        ({"tokens_in": 2**31}, "tokens_in"),  # INTEGER on PostgreSQL: the store refused it
        ({"tokens_out": -1}, "tokens_out"),
        ({"metadata": {"big": 2**63}}, "metadata.big"),
        ({"metadata": {"small": -(2**63) - 1}}, "metadata.small"),
    ],
)
def test_integers_beyond_their_column_are_a_422_not_a_retry(
    api: Api, extra: dict[str, Any], field: str
) -> None:
    response = api.post("/v1/deployments/intents/samples", {"samples": [intent("a", **extra)]})

    [(index, where, _)] = refused(response)
    assert (index, where) == (0, field)
    assert api.stored("intents") == {}


def test_the_largest_integers_are_stored(api: Api) -> None:
    sample = intent("a", tokens_in=2**31 - 1, tokens_out=0, metadata={"n": 2**63 - 1})

    response = api.post("/v1/deployments/intents/samples", {"samples": [sample]})

    assert response.status_code == 200, response.text
    stored = api.stored("intents")["a"]
    assert (stored.tokens_in, stored.tokens_out) == (2**31 - 1, 0)
    assert stored.meta == {"n": 2**63 - 1}


@pytest.mark.parametrize(
    ("route", "item", "field"),
    [
        ("samples", '"latency_ms": Infinity', "latency_ms"),
        ("samples", '"latency_ms": -Infinity', "latency_ms"),
        ("samples", '"latency_ms": 1e400', "latency_ms"),
        ("samples", '"latency_ms": NaN', "latency_ms"),
        ("samples", '"confidence": NaN', "confidence"),
        ("samples", '"probabilities": {"lost_card": NaN}', "probabilities.lost_card"),
        ("samples", '"metadata": {"x": NaN}', "metadata.x"),
        ("samples", '"metadata": {"x": -Infinity}', "metadata.x"),
        ("samples", '"feedback": {"score": NaN}', "feedback.score"),
        ("feedback", '"judge_score": NaN', "judge_score"),
        ("feedback", '"score": Infinity', "score"),
    ],
)
def test_non_finite_numbers_are_a_422(api: Api, route: str, item: str, field: str) -> None:
    # pydantic's JSON parser reads these tokens as floats (so the schema must refuse them), and
    # a NaN stored in a JSON column is JSON no other reader parses.
    if route == "samples":
        body = (
            '{"samples": [{"request_id": "a", "input": "q", "prediction": "lost_card", '
            f"{item}}}]}}"
        )
    else:
        body = f'{{"feedback": [{{"request_id": "a", {item}}}]}}'

    response = post_raw(api, f"/v1/deployments/intents/{route}", body.encode())

    [(index, where, message)] = refused(response)
    assert (index, where) == (0, field)
    assert "finite" in message
    assert api.stored("intents") == {}


NUL = "before\x00after"


@pytest.mark.parametrize(
    ("deployment", "extra", "field"),
    [
        ("bot", {"input": NUL}, "input"),
        ("bot", {"input": [{"role": "user", "content": NUL}]}, "input.0.content"),
        ("bot", {"output": NUL}, "output"),
        ("bot", {"error": NUL}, "error"),
        ("bot", {"label": NUL}, "label"),
        ("bot", {"metadata": {"note": NUL}}, "metadata.note"),
        ("intents", {"prediction": NUL}, "prediction"),
        ("intents", {"probabilities": {NUL: 0.5}}, f"probabilities.{NUL}"),
    ],
)
def test_nul_in_a_text_field_is_a_422(
    api: Api, deployment: str, extra: dict[str, Any], field: str
) -> None:
    """PostgreSQL cannot store NUL in text: the batch was a 503 to retry forever."""
    base = intent("a") if deployment == "intents" else {"request_id": "a", "input": "q"}

    response = api.post(f"/v1/deployments/{deployment}/samples", {"samples": [base | extra]})

    [(index, where, message)] = refused(response)
    assert (index, where) == (0, field)
    assert "NUL character" in message
    assert api.stored(deployment) == {}


@pytest.mark.parametrize(
    ("deployment", "item", "field"),
    [
        ("bot", {"thumb": "up", "comment": NUL}, "comment"),
        ("bot", {"label": NUL}, "label"),
        ("intents", {"label": NUL}, "label"),
    ],
)
def test_nul_in_feedback_is_a_422_and_nothing_is_applied(
    api: Api, deployment: str, item: dict[str, Any], field: str
) -> None:
    kept = next(rid for rid in (f"n{i}" for i in range(50)) if sampled_in("bot", rid, 0.5))
    sample = intent(kept) if deployment == "intents" else {"request_id": kept, "input": "q"}
    assert api.post(f"/v1/deployments/{deployment}/samples", {"samples": [sample]}).json()["new"]
    feedback = {"feedback": [{"request_id": kept, "judge_score": 0.5}, {"request_id": kept} | item]}

    response = api.post(f"/v1/deployments/{deployment}/feedback", feedback)

    [(index, where, message)] = refused(response)
    assert (index, where) == (1, field)
    assert "NUL character" in message
    assert api.stored(deployment)[kept].judge_score is None


def test_a_classification_label_must_be_one_of_the_labels(api: Api) -> None:
    samples = {"samples": [intent("a", label="card_arrival"), intent("b", label="pizza")]}

    [(index, field, message)] = refused(api.post("/v1/deployments/intents/samples", samples))
    assert (index, field) == (1, "label")
    assert "'pizza' is not one of the deployment's labels" in message
    assert api.stored("intents") == {}

    assert api.post("/v1/deployments/intents/samples", {"samples": [intent("a")]}).json()["new"]
    feedback = {
        "feedback": [
            {"request_id": "a", "label": "lost_card"},
            {"request_id": "a", "label": "pizza"},
        ]
    }
    response = api.post("/v1/deployments/intents/feedback", feedback)

    [(index, field, message)] = refused(response)
    assert (index, field) == (1, "label")
    assert "'pizza' is not one of the deployment's labels" in message
    assert api.stored("intents")["a"].label is None  # nothing of the batch was applied
    assert api.counted("driftd_samples_rejected_total", deployment="intents", reason="invalid") == 2


@pytest.mark.parametrize(
    "request_id",
    [
        "jane.doe@example.com",
        "call me",
        "tab\there",
        "ünïcode",
        "",
        "x" * 256,
    ],
)
def test_a_request_id_outside_the_safe_alphabet_is_a_422(api: Api, request_id: str) -> None:
    """Request ids are stored in clear (redacting them would merge ids), so PII must not fit."""
    response = api.post("/v1/deployments/intents/samples", {"samples": [intent(request_id)]})
    [(index, field, _)] = refused(response)
    assert (index, field) == (0, "request_id")

    feedback = {"feedback": [{"request_id": request_id, "thumb": "up"}]}
    [(index, field, _)] = refused(api.post("/v1/deployments/intents/feedback", feedback))
    assert (index, field) == (0, "request_id")


def test_the_request_ids_clients_send_fit_the_alphabet(api: Api) -> None:
    from daemon.proxy.call import new_id

    ids = [
        new_id(),  # the proxy's own
        "req_abc123-4.5",  # OpenAI's x-request-id
        "6f1c2b1e-8a57-4d1e-9f1a-3c2b1a0f9e8d",
        "chatcmpl-AbC123",
        "traffic.jsonl:12",  # the backfill's for a row without one
        "tenant/42:turn=3+retry",
        "aGVsbG8gd29ybGQ=",
    ]
    body = {"samples": [intent(rid) for rid in ids]}

    response = api.post("/v1/deployments/intents/samples", body)

    assert response.status_code == 200, response.text
    assert sorted(api.stored("intents")) == sorted(ids)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"model_version": "jane.doe@example.com"}, "model_version"),
        ({"prompt_version": "prompt for Jane Doe"}, "prompt_version"),
        ({"metadata": {"jane.doe@example.com": 1}}, "metadata.jane.doe@example.com"),
        ({"metadata": {"user name": "x"}}, "metadata.user name"),
    ],
)
def test_identifiers_stored_in_clear_are_held_to_a_safe_alphabet(
    api: Api, extra: dict[str, Any], field: str
) -> None:
    response = api.post("/v1/deployments/intents/samples", {"samples": [intent("a", **extra)]})

    [(index, where, message)] = refused(response)
    assert (index, where) == (0, field)
    assert "never redacted" in message


def test_a_generation_label_is_redacted_like_the_output(api: Api) -> None:
    kept = [rid for rid in (f"g{i}" for i in range(50)) if sampled_in("bot", rid, 0.5)]
    body = {
        "samples": [
            {
                "request_id": kept[0],
                "input": "q",
                "model_version": "gpt-4o-mini-2024-07-18",
                "prompt_version": "prompt-2",
                "metadata": {"user.tier": "gold", "ab_test-7": True},
                "label": "Write to jane@example.com",
            },
            {"request_id": kept[1], "input": "q"},
        ]
    }
    assert api.post("/v1/deployments/bot/samples", body).status_code == 200
    feedback = {"feedback": [{"request_id": kept[1], "label": "Call +44 20 7946 0958"}]}

    assert api.post("/v1/deployments/bot/feedback", feedback).json()["updated"] == 1

    stored = api.stored("bot")
    assert stored[kept[0]].label == "Write to <EMAIL>"
    assert stored[kept[0]].model_version == "gpt-4o-mini-2024-07-18"
    assert stored[kept[1]].label == "Call <PHONE>"
    assert api.counted("driftd_samples_redacted_total", deployment="bot", kind="email") == 1
    assert api.counted("driftd_samples_redacted_total", deployment="bot", kind="phone") == 1


@pytest.mark.parametrize("route", ["samples", "feedback"])
@pytest.mark.parametrize(
    "body", [b"{}", b"[]", b'{"samples": 5, "feedback": 5}', b'"x"', b"null", b"5"]
)
def test_a_body_of_the_wrong_shape_is_told_what_it_must_be(
    api: Api, route: str, body: bytes
) -> None:
    response = post_raw(api, f"/v1/deployments/bot/{route}", body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["message"] == (
        f"the body must be a JSON object with a '{route}' list and nothing else, "
        f'like {{"{route}": [{{...}}, ...]}}; nothing was stored'
    )
    assert detail["problems"]
    assert all(p["index"] is None for p in detail["problems"])


def test_a_key_beside_the_list_is_named_with_the_bad_items(api: Api) -> None:
    body = {"samples": [intent("a"), intent("b", confidence=2)], "sample": []}

    response = api.post("/v1/deployments/intents/samples", body)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["message"] == (
        "the body must be a JSON object with a 'samples' list and nothing else, like "
        '{"samples": [{...}, ...]}; 1 of 2 items are invalid; nothing was stored'
    )
    where = {(p["index"], p["field"]) for p in detail["problems"]}
    assert where == {(None, "sample"), (1, "confidence")}
