"""The Prometheus metrics of docs/reference.md, on a registry built by the composition root.

The families updated on every request are lock-free loop families
(:mod:`proxy.adapters.metrics_families`); the rare ones (auth failures, 429s, breaker
state) are ordinary ``prometheus_client`` metrics, the breaker state an ``Enum`` as the
contract says. Label values are bounded: tenants come from the repository, upstreams
from settings, models are capped (beyond that, ``other``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum
from prometheus_client.core import Metric

from proxy.adapters.genai_attributes import operation_name, provider_name
from proxy.adapters.metrics_families import LoopCounter, LoopGauge, LoopHistogram, register
from proxy.core.exchange import Exchange
from proxy.core.ports import Clock

NONE = "none"
OTHER_MODEL = "other"
BREAKER_STATES = ["closed", "open", "half_open"]
# LLM calls last from tens of milliseconds to minutes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The bucket boundaries the OpenTelemetry GenAI semantic conventions advise.
_GENAI_TOKEN_BUCKETS = tuple(4**power for power in range(14))  # 1 .. 67,108,864
_GENAI_DURATION_BUCKETS = tuple(0.01 * 2**power for power in range(14))  # 0.01 .. 81.92 s
_GENAI_LABELS = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]


class SidecarMetrics:
    """Every metric family of the contract, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = LoopCounter(
            "llm_sidecar_requests",
            "Requests handled, by upstream, tenant and status code.",
            ["upstream", "tenant", "code"],
        )
        self.duration = LoopHistogram(
            "llm_sidecar_request_duration_seconds",
            "Time from request to response end.",
            ["upstream"],
            _DURATION_BUCKETS,
        )
        self.ttfb = LoopHistogram(
            "llm_sidecar_upstream_ttfb_seconds",
            "Time to the upstream response head (time to first token for streams).",
            ["upstream"],
            _DURATION_BUCKETS,
        )
        self.inflight = LoopGauge(
            "llm_sidecar_inflight_requests", "Upstream calls in progress.", ["upstream"]
        )
        self.tokens = LoopCounter(
            "llm_sidecar_tokens",
            "LLM tokens reported by upstreams.",
            ["upstream", "tenant", "model", "type"],
        )
        self.cost = LoopCounter(
            "llm_sidecar_cost_usd",
            "What responses cost in USD, from their usage and the price table.",
            ["upstream", "tenant", "model"],
        )
        self.unpriced = Counter(
            "llm_sidecar_unpriced_requests",
            "Responses with usage whose model has no price: their cost is unknown.",
            ["upstream", "model"],
            registry=registry,
        )
        self.budget_exceeded = Counter(
            "llm_sidecar_budget_exceeded",
            "Requests refused because a tenant or user budget (USD) was spent.",
            ["tenant"],
            registry=registry,
        )
        self.budget_used = ScrapedGauge(
            "llm_sidecar_budget_used_ratio",
            "Spend of the tenant's current budget window / its budget (tenants with a budget).",
            ["tenant"],
        )
        self.spend_flush_errors = Counter(
            "llm_sidecar_spend_flush_errors",
            "Spend flushes to the user repository that failed (the deltas are retried).",
            registry=registry,
        )
        self.attempts = LoopCounter(
            "llm_sidecar_upstream_attempts",
            "Upstream attempts, by endpoint and outcome (ok, status_5xx, status_429, "
            "unreachable, reset, timeout).",
            ["upstream", "endpoint", "outcome"],
        )
        self.retries = LoopCounter(
            "llm_sidecar_retries",
            "Retries made, by the upstream whose attempt failed and why.",
            ["upstream", "reason"],
        )
        self.retry_budget_exhausted = Counter(
            "llm_sidecar_retry_budget_exhausted",
            "Retries refused because the upstream's retry budget was spent.",
            ["upstream"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "llm_sidecar_rate_limited",
            "Requests rejected by a tenant bucket.",
            ["tenant", "limit"],
            registry=registry,
        )
        self.breaker_state = Enum(
            "llm_sidecar_circuit_breaker_state",
            "Circuit breaker state per upstream.",
            ["upstream"],
            states=BREAKER_STATES,
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "llm_sidecar_circuit_breaker_transitions",
            "Circuit breaker state changes.",
            ["upstream", "to"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "llm_sidecar_auth_failures",
            "Rejected credentials, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rate_limiter_errors = Counter(
            "llm_sidecar_rate_limiter_backend_errors",
            "Shared (Redis) bucket store failures; the failure mode decided the outcome.",
            registry=registry,
        )
        self.repository_errors = Counter(
            "llm_sidecar_repository_errors",
            "User repository lookups that failed (auth answered 503).",
            registry=registry,
        )
        # gen_ai.client.token.usage and gen_ai.client.operation.duration, in Prometheus
        # naming, so GenAI dashboards built on the semantic conventions work unchanged.
        self.genai_tokens = LoopHistogram(
            "gen_ai_client_token_usage",
            "Tokens used per GenAI operation, by token type (input / output).",
            [*_GENAI_LABELS, "gen_ai_token_type"],
            _GENAI_TOKEN_BUCKETS,
        )
        self.genai_duration = LoopHistogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration, to the end of the response (stream) as the caller sees it.",
            [*_GENAI_LABELS, "error_type"],
            _GENAI_DURATION_BUCKETS,
        )
        register(
            registry,
            self.requests,
            self.duration,
            self.ttfb,
            self.inflight,
            self.tokens,
            self.cost,
            self.budget_used,
            self.attempts,
            self.retries,
            self.genai_tokens,
            self.genai_duration,
        )


class ScrapedGauge(LoopGauge):
    """A gauge whose values are read from ``source`` at each scrape (set by the composition
    root; ``None``: no series), so nothing updates it on the request path."""

    __slots__ = ("source",)

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self.source: Callable[[], Iterable[tuple[str, float]]] | None = None

    def collect(self) -> Metric:
        if self.source is not None:
            self.values = {(label,): value for label, value in self.source()}
        return super().collect()


class PrometheusObserver:
    """Implements the ``Observer`` port with :class:`SidecarMetrics`."""

    __slots__ = ("_clock", "_max_models", "_metrics", "_models")

    def __init__(self, metrics: SidecarMetrics, clock: Clock, *, max_models: int) -> None:
        self._metrics = metrics
        self._clock = clock
        self._max_models = max_models
        self._models: set[str] = set()

    def model_label(self, model: str | None) -> str:
        if not model:
            return NONE
        if model in self._models:
            return model
        if len(self._models) < self._max_models:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def upstream_started(self, exchange: Exchange) -> None:
        # The label is kept: a fallback may change ``exchange.upstream`` before the end.
        exchange.inflight_upstream = exchange.upstream or NONE
        self._metrics.inflight.add((exchange.inflight_upstream,), 1.0)

    def first_byte(self, exchange: Exchange) -> None:
        if exchange.ttfb is not None:
            self._metrics.ttfb.observe((exchange.upstream or NONE,), exchange.ttfb)

    def request_finished(self, exchange: Exchange) -> None:
        metrics = self._metrics
        upstream = exchange.upstream or NONE
        tenant = exchange.tenant or NONE
        duration = self._clock() - exchange.started
        metrics.requests.inc((upstream, tenant, str(exchange.status)))
        metrics.duration.observe((upstream,), duration)
        if exchange.inflight_upstream is not None:
            metrics.inflight.add((exchange.inflight_upstream,), -1.0)
        for labels in exchange.attempt_log:
            metrics.attempts.inc(labels)
        for retry in exchange.retries:
            metrics.retries.inc(retry)
        if exchange.retry_budget_exhausted is not None:
            metrics.retry_budget_exhausted.labels(exchange.retry_budget_exhausted).inc()
        if exchange.upstream_started:
            operation = operation_name(exchange.path)
            if operation is not None:
                self._genai(exchange, operation, upstream, duration)
        if exchange.input_tokens is not None or exchange.output_tokens is not None:
            model = self.model_label(exchange.response_model or exchange.model)
            if exchange.input_tokens:
                metrics.tokens.inc((upstream, tenant, model, "input"), exchange.input_tokens)
            if exchange.output_tokens:
                metrics.tokens.inc((upstream, tenant, model, "output"), exchange.output_tokens)
        if exchange.cost_usd is not None:
            model = self.model_label(exchange.response_model or exchange.model)
            metrics.cost.inc((upstream, tenant, model), exchange.cost_usd)
        elif exchange.unpriced:
            model = self.model_label(exchange.response_model or exchange.model)
            metrics.unpriced.labels(upstream, model).inc()
        if exchange.rate_limited is not None:
            metrics.rate_limited.labels(tenant, exchange.rate_limited).inc()
        elif exchange.status == 429 and exchange.budget_exceeded:
            metrics.budget_exceeded.labels(tenant).inc()
        if exchange.auth_failure is not None:
            metrics.auth_failures.labels(exchange.auth_failure).inc()

    def _genai(self, exchange: Exchange, operation: str, upstream: str, duration: float) -> None:
        metrics = self._metrics
        provider = provider_name(upstream, exchange.kind)
        labels = (operation, provider, self.model_label(exchange.model))
        status = exchange.status
        error = str(status) if status >= 400 else ""
        metrics.genai_duration.observe((*labels, error), duration)
        if exchange.input_tokens is not None:
            metrics.genai_tokens.observe((*labels, "input"), exchange.input_tokens)
        if exchange.output_tokens is not None:
            metrics.genai_tokens.observe((*labels, "output"), exchange.output_tokens)

    def breaker_transition(self, upstream: str, _old: Any, new: Any) -> None:
        state = getattr(new, "value", str(new))
        self._metrics.breaker_state.labels(upstream).state(state)
        self._metrics.breaker_transitions.labels(upstream, state).inc()
