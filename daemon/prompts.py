"""Prompt versions: what a prompted deployment runs (system message, few-shot examples, model).

A prompt version is a row of the versions registry (``daemon.store.versions``) of kind
``prompt`` whose artifact is the canonical JSON of ``{system, few_shot: [{input, output}],
model}``: sorted keys and no spaces, so the same prompt always makes the same text and the
same hash. The configuration's prompt only seeds the registry: ``ensure_initial`` registers it
as ``prompt-1`` and activates it when a deployment has no active version yet; from then on the
store says which prompt is live (promotion, rollback), whatever the file says.

The proxy asks for the active prompt on every request, so reads go through a small cache with a
time to live of a few seconds (``daemon.serving``): a promotion reaches every replica within that
time, and a deployment costs one store read per TTL, not one per request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.config.models import Deployment
from daemon.domain import Kind, VersionKind
from daemon.errors import DriftdError, StoreError
from daemon.serving import CACHE_TTL_S, ActiveCache, shared
from daemon.store import Store, Version
from daemon.store.versions import add_version, list_versions, promote

log = logging.getLogger("driftd.prompts")

INITIAL_VERSION = "prompt-1"
VERSION_PREFIX = "prompt-"
CONFIG_ACTOR = "driftd:config"
# Attempts at taking the next free version name when another writer takes it first.
_NAME_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Example:
    """A few-shot example: a user message and the answer the assistant should give."""

    input: str
    output: str


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """The content of a prompt version."""

    system: str
    few_shot: tuple[Example, ...]
    model: str

    def artifact(self) -> str:
        """The canonical JSON stored as the version's artifact."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "few_shot": [{"input": e.input, "output": e.output} for e in self.few_shot],
            "model": self.model,
        }

    @classmethod
    def from_json(cls, raw: Any, *, where: str) -> PromptSpec:
        """A prompt from its JSON form (what ``to_json`` gives, or a revision job's result)."""
        return cls.from_artifact(json.dumps(raw), where=where)

    @classmethod
    def from_artifact(cls, text: str, *, where: str) -> PromptSpec:
        """Read an artifact back; ``DriftdError`` naming ``where`` when it is not a prompt."""
        try:
            raw = json.loads(text)
            few_shot = tuple(Example(str(e["input"]), str(e["output"])) for e in raw["few_shot"])
            spec = cls(system=str(raw["system"]), few_shot=few_shot, model=str(raw["model"]))
        except (ValueError, TypeError, KeyError) as error:
            raise DriftdError(
                f"{where} is not a prompt: its artifact must be JSON with 'system', 'few_shot' "
                f"([{{input, output}}]) and 'model' ({type(error).__name__}: {error}); "
                "promote a well-formed prompt version or roll back"
            ) from None
        return spec


@dataclass(frozen=True, slots=True)
class ActivePrompt:
    """The prompt a deployment serves now, and the name of its version (for the samples)."""

    version: str
    system: str
    few_shot: tuple[Example, ...]
    model: str
    etag: str

    @property
    def spec(self) -> PromptSpec:
        return PromptSpec(self.system, self.few_shot, self.model)


def initial_prompt(deployment: Deployment) -> PromptSpec:
    """The prompt of ``deployment``'s configuration; ``ValueError`` for a finetuned one."""
    if deployment.prompt is None:
        raise ValueError(f"deployment {deployment.name!r} is {deployment.kind}, it has no prompt")
    prompt = deployment.prompt
    return PromptSpec(
        system=prompt.system,
        few_shot=tuple(Example(e.input, e.output) for e in prompt.examples),
        model=prompt.model,
    )


def ensure_initial(store: Store, deployment: Deployment) -> Version | None:
    """Register the configured prompt as ``prompt-1`` and activate it, when the prompted
    ``deployment`` has no active version; the version activated, or None if nothing was done.

    Idempotent and safe when several replicas start at once: a name or promotion another one
    got to first is taken as done, as long as the deployment ends with an active version.
    """
    if deployment.kind is not Kind.prompted:
        return None
    name = deployment.name
    if store.active_version(name) is not None:
        return None
    existing = {v.name for v in list_versions(store, name)}
    if INITIAL_VERSION not in existing:
        try:
            add_version(
                store,
                name,
                kind=VersionKind.prompt,
                name=INITIAL_VERSION,
                artifact=initial_prompt(deployment).artifact(),
                meta={"source": "config"},
            )
        except StoreError:
            raise
        except DriftdError:
            pass  # another replica registered it a moment ago
    try:
        change = promote(store, name, INITIAL_VERSION, actor=CONFIG_ACTOR)
    except StoreError:
        raise
    except DriftdError:
        if store.active_version(name) is None:
            raise
        return None
    log.info("%s: registered the configured prompt as version %s", name, INITIAL_VERSION)
    return change.active


def add_prompt_version(
    store: Store,
    name: str,
    prompt: PromptSpec,
    parent: str | None = None,
    meta: dict[str, Any] | None = None,
    *,
    eval_scores: dict[str, Any] | None = None,
    job_id: int | None = None,
    rejected: bool = False,
) -> Version:
    """Record ``prompt`` as a candidate version of deployment ``name`` (rejected if its gate
    already turned it down), named ``prompt-<n>`` after the highest number taken."""
    for _ in range(_NAME_ATTEMPTS):
        taken = [_number(v.name) for v in list_versions(store, name)]
        version = f"{VERSION_PREFIX}{max((n for n in taken if n is not None), default=0) + 1}"
        try:
            return add_version(
                store,
                name,
                kind=VersionKind.prompt,
                name=version,
                artifact=prompt.artifact(),
                parent=parent,
                state="rejected" if rejected else "candidate",
                eval_scores=eval_scores,
                meta=meta,
                job_id=job_id,
            )
        except StoreError:
            raise
        except DriftdError:
            if version not in {v.name for v in list_versions(store, name)}:
                raise
            # Another writer took the name between the read and the insert; take the next.
    raise DriftdError(
        f"could not name a new prompt version of {name!r}: {_NAME_ATTEMPTS} names were taken "
        "by concurrent writers in a row; try again"
    )


def read_active_prompt(store: Store, name: str) -> ActivePrompt | None:
    """The deployment's active prompt, read from the store now; None when its active version
    is not a prompt, or it has none. ``StoreError`` if the deployment is not registered."""
    version = store.active_version(name)
    if version is None or version.kind != VersionKind.prompt:
        return None
    spec = PromptSpec.from_artifact(version.artifact, where=f"version {version.name!r} of {name!r}")
    return ActivePrompt(
        version=version.name,
        system=spec.system,
        few_shot=spec.few_shot,
        model=spec.model,
        etag=prompt_etag(version.name, spec),
    )


def prompt_etag(version: str, spec: PromptSpec) -> str:
    """A strong HTTP entity tag of what the prompt endpoint serves: the version's name and
    artifact, so it changes exactly when the answer does (a rollback to an identical prompt
    changes the version name the app should report)."""
    digest = hashlib.sha256(f"{version}\n{spec.artifact()}".encode()).hexdigest()
    return f'"{digest[:32]}"'


class PromptCache(ActiveCache[ActivePrompt]):
    """Active prompts by deployment, read through the cache (``daemon.serving.ActiveCache``):
    at most once per ``ttl_s``, and the prompt last read served while the store is down."""

    what = "prompt"

    def __init__(
        self,
        store: Store,
        *,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[Store, str], ActivePrompt | None] = read_active_prompt,
    ) -> None:
        super().__init__(store, read, ttl_s=ttl_s, clock=clock)


def prompt_cache(store: Store) -> PromptCache:
    """The process's cache of ``store``'s active prompts (one per store, made on first use)."""
    return shared(store, PromptCache)


def active_prompt(store: Store, name: str) -> ActivePrompt | None:
    """The active prompt of deployment ``name``, at most ``CACHE_TTL_S`` old: cheap enough to
    call on every proxied request. None when the deployment serves no prompt version."""
    return prompt_cache(store).get(name)


def prompt_record(name: str, prompt: ActivePrompt) -> Mapping[str, Any]:
    """The JSON form the prompt endpoint serves."""
    return {"deployment": name, "version": prompt.version, **prompt.spec.to_json()}


def _number(version: str) -> int | None:
    suffix = version.removeprefix(VERSION_PREFIX)
    return int(suffix) if version.startswith(VERSION_PREFIX) and suffix.isdigit() else None
