"""What each deployment serves now, its active version, read through a per-process cache.

The proxy asks on every request which version a deployment serves (the prompt it injects, the
fine-tuned model id it calls), and apps that call their model themselves ask the API the same
(``GET /v1/deployments/{name}/version`` and ``/prompt``). So reads go through a small cache
with a time to live of a few seconds: a deployment costs one store read per TTL, not one per
request; a promotion or rollback made in this process clears its entries at once (``forget``),
and other replicas learn of it within the TTL. When the store cannot be read, the value last
read is served on: the proxy keeps serving the version it knows rather than failing users'
calls because the store is unreachable.

One cache of each sort (``ActiveCache`` subclass) is kept per store, made on first use
(``shared``); the prompt's lives in ``daemon.prompts``, the version's here.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from daemon.config.models import Deployment
from daemon.config.sections.deployment import Provider
from daemon.domain import Kind, VersionKind
from daemon.errors import StoreError
from daemon.store import Store

log = logging.getLogger("driftd.serving")

CACHE_TTL_S = 5.0
FINE_TUNED_PREFIX = "ft:"
"""How OpenAI names every fine-tuned model: ``ft:<base>:<org>:<suffix>:<id>``."""

T = TypeVar("T")
C = TypeVar("C", bound="ActiveCache[Any]")


class ActiveCache(Generic[T]):
    """Values by deployment, each read by ``read(store, name)`` at most once per ``ttl_s``
    (None included, so a deployment without one costs as little). Safe to share between
    threads.

    When a read fails with ``StoreError`` and an older value is at hand, that value is served
    and the read tried again after another ``ttl_s``; with nothing at hand the error is raised.
    """

    what = "version"
    """What the values are, for the log."""

    def __init__(
        self,
        store: Store,
        read: Callable[[Store, str], T | None],
        *,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be zero or more, got {ttl_s}")
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock
        self._read = read
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, T | None]] = {}

    def __call__(self, name: str) -> T | None:
        return self.get(name)

    def get(self, name: str) -> T | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and now - entry[0] < self.ttl_s:
            return entry[1]
        try:
            value = self._read(self.store, name)
        except StoreError as error:
            if entry is None:
                raise
            shown = getattr(entry[1], "version", "(none)")
            log.warning("%s: serving the cached %s %s: %s", name, self.what, shown, error)
            value = entry[1]
        with self._lock:
            self._entries[name] = (now, value)
        return value

    def invalidate(self, name: str | None = None) -> None:
        """Forget one deployment's entry (after promoting or rolling it back here), or all."""
        with self._lock:
            if name is None:
                self._entries.clear()
            else:
                self._entries.pop(name, None)


_caches: weakref.WeakKeyDictionary[Store, dict[Callable[[Store], Any], ActiveCache[Any]]] = (
    weakref.WeakKeyDictionary()
)
_caches_lock = threading.Lock()


def shared(store: Store, sort: Callable[[Store], C]) -> C:
    """The process's cache of sort ``sort`` (an ``ActiveCache`` subclass whose read has a
    default) over ``store``: one per store, made on first use as ``sort(store)``."""
    with _caches_lock:
        caches = _caches.setdefault(store, {})
        cache = caches.get(sort)
        if cache is None:
            cache = caches[sort] = sort(store)
    return cast(C, cache)


def forget(store: Store, deployment: str) -> None:
    """Clear ``deployment`` from every cache over ``store``: its version changed here, and the
    next request must see the change, not wait for the TTL."""
    with _caches_lock:
        caches = list(_caches.get(store, {}).values())
    for cache in caches:
        cache.invalidate(deployment)


@dataclass(frozen=True, slots=True)
class ActiveVersion:
    """A deployment's active version as apps learn of it: its name, kind (model or prompt),
    artifact (a folder, a model id, a prompt's JSON) and the ETag of what is served of it."""

    version: str
    kind: str
    artifact: str
    etag: str


def read_active_version(store: Store, name: str) -> ActiveVersion | None:
    """The deployment's active version, read from the store now; None when it has none.
    ``StoreError`` if the store cannot be read or the deployment is not registered."""
    version = store.active_version(name)
    if version is None:
        return None
    return ActiveVersion(
        version=version.name,
        kind=version.kind,
        artifact=version.artifact,
        etag=version_etag(version.name, version.kind, version.artifact),
    )


def version_etag(version: str, kind: str, artifact: str) -> str:
    """A strong HTTP entity tag of a version: it changes exactly when the version served
    does (a rollback to an identical artifact changes the name the app should report)."""
    digest = hashlib.sha256(f"{kind}\n{version}\n{artifact}".encode()).hexdigest()
    return f'"{digest[:32]}"'


class VersionCache(ActiveCache[ActiveVersion]):
    """Active versions by deployment, read through the cache (``ActiveCache``)."""

    def __init__(
        self,
        store: Store,
        *,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[Store, str], ActiveVersion | None] = read_active_version,
    ) -> None:
        super().__init__(store, read, ttl_s=ttl_s, clock=clock)


def version_cache(store: Store) -> VersionCache:
    """The process's cache of ``store``'s active versions."""
    return shared(store, VersionCache)


def serves_by_model_id(deployment: Deployment) -> bool:
    """Whether ``deployment``'s model versions are model ids its upstream serves (a fine-tuned
    deployment whose model OpenAI serves), rather than folders that hooks deploy."""
    model = deployment.model
    return (
        deployment.kind is Kind.finetuned
        and model is not None
        and model.provider is Provider.openai
    )


def upstream_model(version: ActiveVersion | None) -> str | None:
    """The model id to call upstream for ``version`` of a deployment whose model the upstream
    serves by id (an OpenAI fine-tune): its artifact when it is a model version, else None
    (no version yet: the configured model serves, and calls go as the app sent them)."""
    if version is None or version.kind != VersionKind.model:
        return None
    return version.artifact


def is_openai_model_id(artifact: str) -> bool:
    """Whether a model version's artifact is an OpenAI fine-tuned model id rather than a
    folder: the versions driftd registers for an OpenAI deployment are its fine-tunes, and
    OpenAI names every one ``ft:…``, which no model folder driftd writes is called."""
    return artifact.startswith(FINE_TUNED_PREFIX)
