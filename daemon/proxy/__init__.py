"""The OpenAI-compatible proxy: apps point their OpenAI SDK's base URL at driftd.

``POST /proxy/{deployment}/v1/chat/completions`` (plain and ``stream: true``) and
``POST /proxy/{deployment}/v1/embeddings`` are forwarded to the deployment's upstream, and what
comes back is passed through as it came: status, body (error bodies too) and the headers a client
acts on. Streams are relayed chunk by chunk as they arrive, never buffered.

Monitoring never costs the user anything: the sample of a call is built after its response is
complete and handed to a recorder thread (``recorder``), which batches calls through the ingest
pipeline to the writer without the request ever waiting for storage. When the recorder's or the
writer's queue is full the sample is dropped and counted (the one place in driftd that may drop a
sample, in ``driftd_samples_dropped_total``: a call matters more than its record);
nothing the recording does can fail or slow the request.

For a prompted deployment, ``prompt_for`` names the active prompt version, which the proxy injects
(system message, few-shot turns, model), so a promoted prompt goes live without touching the app.
For a fine-tuned deployment served upstream by model id (an OpenAI fine-tune), ``model_for`` names
the active model version, whose id replaces the model the app asked for; the sample records the
version's name as its ``model_version``. Before any version is promoted, calls go as they came.

Modules: ``forward`` (admitting, forwarding, streaming: a plain ASGI handler), ``routes`` (the
documented routes, and the fast path that serves them ahead of FastAPI), ``upstream`` (the
pooled client), ``call`` (a call and its sample), ``recorder`` (samples to the writer),
``prompt`` (the active prompt or model a call is given). What the proxy did is counted on the
replica's metrics (``daemon.metrics.ReplicaMetrics``).
"""

from daemon.proxy.call import CHAT, EMBEDDINGS
from daemon.proxy.forward import OPENAI_BASE_URL, REQUEST_ID_HEADER, Forwarder
from daemon.proxy.prompt import ActiveModel, ActivePrompt, ModelFor, PromptFor
from daemon.proxy.recorder import ProxyRecorder
from daemon.proxy.routes import ProxyRouter, proxy_router
from daemon.proxy.upstream import UpstreamClient

__all__ = [
    "CHAT",
    "EMBEDDINGS",
    "OPENAI_BASE_URL",
    "REQUEST_ID_HEADER",
    "ActiveModel",
    "ActivePrompt",
    "Forwarder",
    "ModelFor",
    "PromptFor",
    "ProxyRecorder",
    "ProxyRouter",
    "UpstreamClient",
    "proxy_router",
]
