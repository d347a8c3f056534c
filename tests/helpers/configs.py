"""The smallest configurations ``driftd`` runs: one prompted generation deployment, ``bot``
(``minimal_config``), or one fine-tuned classifier, ``intents`` (``finetuned_config``)."""

from __future__ import annotations

from collections.abc import Sequence


def _sections(sections: dict[str, str]) -> list[str]:
    """Top-level sections as flow mappings, one a line: ``scheduling="lease_ttl: 2s"`` becomes
    ``scheduling: {lease_ttl: 2s}``."""
    return [f"{name}: {{{inside}}}" for name, inside in sections.items()]


def minimal_config(*, monitor: str = "", name: str = "bot", **sections: str) -> str:
    """The YAML of one prompted deployment with nothing but its model and system prompt;
    ``monitor`` is the inside of a flow mapping (``"schedule: every 1s"``), added as the
    deployment's ``monitor`` when given, and each of ``sections`` (``scheduling``, ``storage``,
    …) the inside of a top-level section's, before ``deployments``."""
    lines = _sections(sections)
    lines += [
        "deployments:",
        f"  - name: {name}",
        "    kind: prompted",
        "    task: generation",
        '    prompt: {model: gpt-4o-mini, system: "You help bank customers."}',
    ]
    if monitor:
        lines.append(f"    monitor: {{{monitor}}}")
    return "\n".join(lines) + "\n"


def finetuned_config(
    *,
    labels: Sequence[str] = ("a", "b"),
    name: str = "intents",
    more: str = "",
    **sections: str,
) -> str:
    """The YAML of one fine-tuned classification deployment with nothing but its model
    (``./model``) and ``labels``, its last line the labels' (a test appends keys of the
    deployment indented four spaces); ``more`` is such lines, each ending in a newline, and
    ``sections`` are added as in ``minimal_config``."""
    lines = _sections(sections)
    lines += [
        "deployments:",
        f"  - name: {name}",
        "    kind: finetuned",
        "    task: classification",
        "    model: {name: ./model}",
        f"    labels: [{', '.join(labels)}]",
    ]
    return "\n".join(lines) + "\n" + more
