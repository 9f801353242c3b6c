"""OpenTelemetry traces: off unless an OTLP endpoint is configured, then exported over OTLP HTTP/protobuf.

    configure(role)                 each process once at start (web: "web", workers: "worker")
    tracer() -> Tracer | None       None when tracing is off: callers skip every span (no cost)
    traceparent(span) -> str        the span's W3C `traceparent`, carried in the inbox entry it caused
    context_of(traceparent)         the OpenTelemetry Context a child span of that traceparent starts in
    capture_content() -> bool       prompt and answer text in spans (off: opt-in, privacy)
    shutdown()                      flush what is queued (the web process's shutdown; atexit otherwise)
    install(provider) / reset()     another provider (an embedding application's, a test's in-memory one)

Configuration is OpenTelemetry's own environment, read by the SDK: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns tracing on; `OTEL_SERVICE_NAME` (default `docent`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` as the SDK
documents them; `OTEL_SDK_DISABLED=true` turns it off again. Only the `http/protobuf` protocol is shipped
(no gRPC dependency): another `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` stops the process with a
`config_error`. `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (the GenAI instrumentations'
switch) adds the prompt messages and the answer text to LLM spans; without it no question, prompt or
answer text is in any span.

The SDK is imported only when tracing is on; the API alone (`opentelemetry-api`) is cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from store.exceptions import ConfigError

log = logging.getLogger(__name__)

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SUPPORTED_PROTOCOL = "http/protobuf"
DEFAULT_SERVICE = "docent"
INSTRUMENTATION = "docent"

_propagator = TraceContextTextMapPropagator()
_state: dict[str, object] = {}  # "tracer", "provider", "capture": this process's configuration


def enabled_by(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_ENVS)


def check_protocol(env: Mapping[str, str]) -> None:
    """With tracing on, an OTLP protocol other than http/protobuf is a ConfigError."""
    if not enabled_by(env):
        return
    for name in PROTOCOL_ENVS:
        value = env.get(name, "").strip()
        if value and value != SUPPORTED_PROTOCOL:
            raise ConfigError(f"{name}={value!r}: Docent exports traces over {SUPPORTED_PROTOCOL} only")


def configure(role: str, env: Mapping[str, str] | None = None) -> bool:
    """Install this process's tracer provider when an endpoint is configured; True when tracing is on."""
    env = os.environ if env is None else env
    if "tracer" in _state:
        return _state["tracer"] is not None
    _state["capture"] = env.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"
    if not enabled_by(env):
        _state["tracer"] = None
        return False
    check_protocol(env)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = Resource({"service.name": DEFAULT_SERVICE, "docent.process": role, "process.pid": os.getpid()})
    resource = defaults.merge(OTELResourceDetector().detect())
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource = resource.merge(Resource({"service.name": env["OTEL_SERVICE_NAME"].strip()}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER, parent-based by default
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _state["provider"] = provider
    _state["tracer"] = provider.get_tracer(INSTRUMENTATION)
    log.info("tracing: OTLP %s export on (%s)", SUPPORTED_PROTOCOL, role)
    return True


def tracer() -> Tracer | None:
    found = _state.get("tracer")
    return found if isinstance(found, Tracer) else None


def capture_content() -> bool:
    return _state.get("capture") is True


def traceparent(span: Span) -> str:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_of(value: str) -> Context | None:
    """The context of a `traceparent` header value; None for an empty or malformed one (a new trace)."""
    if not value:
        return None
    context = _propagator.extract({"traceparent": value})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def provider() -> object | None:
    """The SDK TracerProvider in use (None when tracing is off)."""
    return _state.get("provider")


def shutdown() -> None:
    """Flush and stop the provider; the next `configure` (another app in this process) starts a new one."""
    provider = _state.get("provider")
    _state.clear()
    if provider is not None:
        provider.shutdown()  # type: ignore[attr-defined]


def install(provider: object, *, capture: bool = False) -> None:
    """Use a given SDK `TracerProvider` (an embedding application's, or a test's in-memory exporter)."""
    _state.clear()
    _state["provider"] = provider
    _state["tracer"] = provider.get_tracer(INSTRUMENTATION)  # type: ignore[attr-defined]
    _state["capture"] = capture


def reset() -> None:
    """Forget this process's configuration (the next `configure` reads the environment again)."""
    _state.clear()
