"""The ingest API against a real store (SQLite and PostgreSQL) and the real writer thread:
authentication, storing, sampling, feedback, limits and the write queue."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from daemon.api.spec import ErrorDetail, InvalidBatch
from daemon.errors import QueueFull
from daemon.ingest.pipeline import sampled_in
from daemon.ingest.writer import Writer
from daemon.metrics import ReplicaMetrics
from daemon.store import NewSample, Store
from daemon.store.repository import RowEncoder, SampleRows
from tests.daemon.api.conftest import ADMIN, INGEST, T0, Api, intent


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
