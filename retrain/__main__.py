"""``python -m retrain <kind> --spec job.json``: run one job, as the daemon's job runner does.

Each kind's spec and result are models of ``retrain.contract`` (``SPECS``, ``RESULTS``); its
module has ``run(spec, progress) -> result`` (raising ``retrain.errors.JobError`` for failures an
operator can act on). Modules are imported only for the kind that runs, so a job pays for no
other kind's imports.

The contract with whoever starts the job (driftd's runner, or an operator by hand):

- progress lines go to stdout, errors and tracebacks to stderr (the runner sends both to the
  job's log);
- the result goes to ``result.json`` in the spec's ``output_dir``: what the job found, with
  ``status`` ``succeeded``, or ``failed`` and an ``error``;
- the exit code is 0 when the job succeeded, 1 when it failed, 2 when the spec (or the command
  line) is invalid and nothing ran, 3 when it failed in a way a retry would repeat (a token or
  cost cap reached, unreadable data: ``JobError.final``); it is also written to a file named
  ``exit`` beside the spec, as the very last step, so that a daemon which is not this
  process's parent (it was restarted while the job ran) can still learn it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retrain.contract import SPECS, JobResult
from retrain.errors import (
    EXIT_BAD_SPEC,
    EXIT_FAILED,
    EXIT_FINAL,
    EXIT_SUCCEEDED,
    JobCancelled,
    JobError,
    SpecError,
)

KINDS = {
    "evaluate": "retrain.evaluate",
    "train": "retrain.train",
    "openai_finetune": "retrain.openai_finetune",
    "gate": "retrain.gate",
    "finetune": "retrain.finetune",
    "prompt_revision": "retrain.prompt_revision",
}
# Kinds renamed in 0.2, still run under their new names: a Kubernetes Job created by 0.1 may
# start its pod again on a 0.2 image.
RETIRED_KINDS = {"retrain": "finetune", "revise_prompt": "prompt_revision"}
RESULT_FILE = "result.json"
EXIT_FILE = "exit"  # the name driftd's executors read (daemon.jobs.executor.EXIT_FILE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrain",
        description="Run one driftd job: read its spec, write result.json in its output_dir.",
    )
    parser.add_argument("kind", choices=sorted(KINDS), type=_current_kind, help="the job to run")
    parser.add_argument("--spec", type=Path, required=True, help="the job's spec (JSON)")
    args = parser.parse_args(argv)
    code = run(args.kind, args.spec)
    try:
        _write_atomic(args.spec.with_name(EXIT_FILE), f"{code}\n")
    except OSError as error:
        print(f"retrain: cannot record the exit code beside {args.spec}: {error}", file=sys.stderr)
    return code


def run(kind: str, spec_path: Path) -> int:
    """Run job ``kind`` with the spec at ``spec_path``; returns the exit code."""
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as error:
        return _bad_spec(kind, spec_path, f"cannot read it: {error.strerror or error}")
    except ValueError as error:  # not UTF-8
        return _bad_spec(kind, spec_path, f"it is not JSON: {error}")
    try:
        spec = SPECS[kind].parse(text, spec_path.parent, warn=_warn(kind))
    except SpecError as error:
        return _bad_spec(kind, spec_path, str(error))
    job: Any = importlib.import_module(KINDS[kind])
    print(f"{kind}: spec {spec_path}", flush=True)
    try:
        result: JobResult = job.run(spec, _progress)
    except Exception as error:
        # The traceback is for the log; the result gets the message an operator can act on.
        traceback.print_exc()
        message = str(error) if isinstance(error, JobError) else f"{type(error).__name__}: {error}"
        print(f"{kind}: failed: {message}", file=sys.stderr, flush=True)
        status = "cancelled" if isinstance(error, JobCancelled) else "failed"
        _write_result(spec.output, JobResult(kind=kind, status=status, error=message))
        return EXIT_FINAL if isinstance(error, JobError) and error.final else EXIT_FAILED
    _write_result(spec.output, result.model_copy(update={"kind": kind, "status": "succeeded"}))
    print(f"{kind}: succeeded; result in {spec.output / RESULT_FILE}", flush=True)
    return EXIT_SUCCEEDED


def _current_kind(kind: str) -> str:
    if kind in RETIRED_KINDS:
        new = RETIRED_KINDS[kind]
        print(f"retrain: job kind {kind} is deprecated; running it as {new}", file=sys.stderr)
        return new
    return kind


def _progress(line: str) -> None:
    print(line, flush=True)


def _warn(kind: str) -> Callable[[str], None]:
    def warn(message: str) -> None:
        print(f"{kind}: warning: {message}", file=sys.stderr, flush=True)

    return warn


def _bad_spec(kind: str, spec_path: Path, problem: str) -> int:
    print(f"retrain {kind}: invalid spec {spec_path}: {problem}", file=sys.stderr, flush=True)
    return EXIT_BAD_SPEC


def _write_result(output_dir: Path, result: JobResult) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(output_dir / RESULT_FILE, result.model_dump_json(indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one, never half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
