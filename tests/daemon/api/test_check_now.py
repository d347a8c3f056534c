"""``POST /v1/deployments/NAME/checks``: an operator's "check now", run by the leader's scheduler
as a tick of its own (claimed, run in the check workers, stored), refused by a follower."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.daemon.api.conftest import SECRETS, Launch
from tests.helpers.wait import wait_for

ADMIN = {"Authorization": f"Bearer {SECRETS.admin}"}
INTENTS = (
    "  - {name: intents, kind: finetuned, task: classification, labels: [card, pin],\n"
    "     model: {provider: transformers, name: ./models/intents}}\n"
)


def test_the_leader_checks_at_once_and_stores_the_check_as_a_tick(launch: Launch) -> None:
    driftd = launch(INTENTS)
    wait_for(lambda: driftd.client.get("/healthz").json()["leader"], 60, "a leader", interval=0.1)
    answer = driftd.client.post("/v1/deployments/intents/checks", headers=ADMIN)
    assert answer.status_code == 202, answer.text
    tick = datetime.fromisoformat(answer.json()["scheduled_for"])
    assert answer.json()["deployment"] == "intents"

    def stored_check() -> list[dict[str, Any]]:
        checks = driftd.client.get("/v1/checks", headers=ADMIN).json()
        return [c for c in checks if datetime.fromisoformat(c["scheduled_for"]) == tick]

    stored = wait_for(stored_check, 60, "the check to be stored", interval=0.2)
    # No samples: the check ran and says so, it did not fail.
    assert stored[0]["status"] == "insufficient_data", stored[0]
    unknown = driftd.client.post("/v1/deployments/nobody/checks", headers=ADMIN)
    assert unknown.status_code == 404
    assert "nobody" in unknown.json()["detail"]
    ingest = {"Authorization": f"Bearer {SECRETS.ingest}"}
    assert driftd.client.post("/v1/deployments/intents/checks", headers=ingest).status_code == 403
    assert driftd.client.post("/v1/deployments/intents/checks").status_code == 401

    # A replica that steps down refuses, and says where to go.
    scheduler = driftd.daemon._scheduler
    assert scheduler is not None
    scheduler.leadership.stop(release_lease=True)
    refused = driftd.client.post("/v1/deployments/intents/checks", headers=ADMIN)
    assert refused.status_code == 409, refused.text
    assert "does not lead" in refused.json()["detail"]
    assert "GET /healthz" in refused.json()["detail"]
