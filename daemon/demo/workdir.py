"""The demo's working folder: what it holds, how a new run resets it, and its ``driftd.yaml``.

A run starts from an empty store, so each run tells the whole story again; the first model is
kept (``initial/``) and reused when the next run would train the very same one. The demo only
ever deletes what it wrote itself, by name, and only in a folder that it marked as its own
(``.driftd-demo``): pointing ``--dir`` at a folder of something else is refused.

Paths the daemon resolves against its working directory (the store, snapshots, jobs) are written
absolute, so that ``driftd checks -c <dir>/driftd.yaml`` works from any folder; paths resolved
against the configuration file (data files, ``hooks.models_dir``) stay relative.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from daemon.demo.data import Scenario, labelled_rows, write_jsonl
from daemon.errors import DemoError

MARKER = ".driftd-demo"
DEPLOYMENT = "banking77-intents"
CONFIG = "driftd.yaml"
INITIAL = "initial"
"""The first model's train job folder, kept between runs."""
DATA = "data"
ORIGINAL = "data/original.jsonl"
GOLDEN = "data/golden.jsonl"
MODELS = "models"
REPORT = "report.html"
SUMMARY = "summary.json"
DAEMON_LOG = "daemon.log"
# What a run writes, and the next run deletes first.
_RUN_FILES = ("driftd.db", "driftd.db-wal", "driftd.db-shm", CONFIG, REPORT, SUMMARY, DAEMON_LOG)
_RUN_FOLDERS = (DATA, "jobs", "snapshots", MODELS)


def prepare(folder: Path) -> Path:
    """Make ``folder`` ready for a run and return it, absolute: created if missing, else
    emptied of the previous run's store, jobs, models and logs (the first model stays).

    ``DemoError`` if it holds anything and is not a demo folder."""
    folder = folder.expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise DemoError(f"--dir {folder} is a file; name a folder (it is created if missing)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise DemoError(
            f"--dir {folder} is not empty and was not made by driftd demo (no {MARKER} file); "
            "name a new or empty folder, so the demo deletes nothing of yours"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by driftd demo; the next run resets this folder\n")
    for name in _RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in _RUN_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)
    (folder / MODELS).mkdir()
    return folder


def write_data(folder: Path, scenario: Scenario) -> None:
    """The files the configuration names: the first model's training data (the re-tune mixes
    it with production data) and the golden set the gate scores on."""
    write_jsonl(folder / ORIGINAL, labelled_rows(scenario.active))
    write_jsonl(folder / GOLDEN, labelled_rows(scenario.golden))


def write_config(folder: Path, scenario: Scenario, port: int) -> Path:
    """Write the demo's ``driftd.yaml``: one fine-tuned classifier, checked every 5 s against
    the hour before, re-tuned on drift without approval, promoted through a ``current`` link."""
    size = scenario.size
    labels = ", ".join(size.labels)
    trainer = json.dumps(size.trainer())
    text = f"""\
# Written by `driftd demo` ({size.name} size); the next run of the demo rewrites it.
# A Banking77 intent classifier (MiniLM tuned on {len(size.known)} intents) whose traffic shifts
# toward {len(size.unseen)} intents it never learnt. Short intervals, small windows: a demo, not
# production settings (see examples/banking77/driftd.yaml for those).

server:
  host: 127.0.0.1
  port: {port}

storage:
  url: {_quoted(f"sqlite:///{folder / 'driftd.db'}")}
  snapshots: {_quoted(folder / "snapshots")}

logging:
  level: info
  format: json

ingest:
  workers: 0                 # describe samples in the server process: one process less

scheduling:
  jobs_dir: {_quoted(folder / "jobs")}
  lease_ttl: 5s
  job_poll: 1s
  job_heartbeat: 2s
  job_stale_after: 60s

deployments:
  - name: {DEPLOYMENT}
    kind: finetuned
    task: classification
    model:
      provider: transformers
      name: {MODELS}/current         # the link the promotion hook points at the active version
    labels: [{labels}]
    monitor:
      schedule: every 5s
      window: 1h                 # the current window; the reference is the hour before it,
      reference:                 # until a re-tuned version is active: from then on its first
        kind: previous_window    # samples (its baseline), against the window after them
        after_promotion: baseline
        samples: {size.baseline_samples}
      min_rows: {size.min_rows}
      max_rows: 2000
      quality_drop: {size.quality_drop:g}          # accuracy falling this much is quality drift
    policy:
      on_drift: retune
      act_on: [quality, output]
      consecutive: 2             # two drifted checks in a row before acting
      cooldown: 30s
      max_jobs_per_day: 1
      approval: auto
    retune:
      golden_set: {GOLDEN}
      data:
        training_data: {ORIGINAL}
        min_labelled: {size.min_labelled}
        production_ratio: 0.8      # mostly production data: the shift is what is new
        max_rows: {size.retune_max_rows}
      trainer: {trainer}
      gate:
        metric: accuracy
        margin: 0.02
        bootstrap_samples: 500
      hooks:
        models_dir: {MODELS}
      timeout: 20m
"""
    path = folder / CONFIG
    path.write_text(text, encoding="utf-8")
    return path


def _quoted(value: object) -> str:
    """``value`` as a YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(str(value))
