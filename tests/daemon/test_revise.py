"""The spec of a prompt revision job, as the daemon writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemon.config import parse_config
from daemon.retune.specs import prompt_revision_spec
from daemon.store import NewSample, Store

CONFIG = """\
deployments:
  - name: intents
    kind: prompted
    task: classification
    prompt: {model: target-mini, system: "Label the customer's message."}
    labels: [card_arrival, card_linking]
    policy: {on_drift: retune}
    retune:
      golden_set: {path: test.csv, columns: {input: text, label: category}}
"""


def test_the_golden_set_travels_with_its_columns(store: Store, tmp_path: Path) -> None:
    (tmp_path / "test.csv").write_text("text,category\nwhere is my card,card_arrival\n")
    text = CONFIG + f"scheduling: {{jobs_dir: {tmp_path / 'jobs'}}}\n"
    config = parse_config(text, environ={}, base_dir=tmp_path)
    store.ensure_deployment("intents", "prompted", "classification")
    wrong = NewSample(
        "s-1",
        datetime.now(UTC) - timedelta(minutes=1),
        input="my card has not come",
        prediction="card_linking",
        label="card_arrival",
    )
    store.insert_samples("intents", [wrong])

    spec = prompt_revision_spec(config, store, config.deployments[0], trigger="drift", lineage={})

    assert spec.golden_set == (tmp_path / "test.csv").resolve()
    assert (spec.golden_input_field, spec.golden_label_field) == ("text", "category")
