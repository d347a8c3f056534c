"""The smallest configuration ``driftd`` runs: one prompted generation deployment, ``bot``."""

from __future__ import annotations


def minimal_config(*, scheduling: str = "", monitor: str = "", name: str = "bot") -> str:
    """The YAML of one prompted deployment with nothing but its model and system prompt;
    ``scheduling`` and ``monitor`` are flow mappings' insides (``"lease_ttl: 2s"``), added as
    the ``scheduling`` section and the deployment's ``monitor`` when given."""
    lines = [f"scheduling: {{{scheduling}}}"] if scheduling else []
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
