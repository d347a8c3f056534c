"""The ingest API against crafted input: each bad value refused with a 422 naming the field,
never a 5xx nor stored wrong (timestamps, integers, non-finite numbers, NUL, labels, request
ids, body shapes)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.ingest.pipeline import sampled_in
from tests.daemon.api.conftest import INGEST, Api, intent


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
