"""The SDK-free sampler against the SDK's own samplers, over every name the environment takes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling

from proxy.adapters.tracing_sampling import sampler_from_env

SDK = {
    "always_on": sampling.ALWAYS_ON,
    "always_off": sampling.ALWAYS_OFF,
    "parentbased_always_on": sampling.DEFAULT_ON,
    "parentbased_always_off": sampling.DEFAULT_OFF,
    "traceidratio": sampling.TraceIdRatioBased(0.25),
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio(0.25),
}


def _sdk_decision(sampler: sampling.Sampler, parent: bool | None, trace_id: int) -> bool:
    context = Context()
    if parent is not None:
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if parent else 0)
        span = trace.SpanContext(trace_id, 0x42, is_remote=True, trace_flags=flags)
        context = trace.set_span_in_context(trace.NonRecordingSpan(span), context)
    result = sampler.should_sample(context, trace_id, "POST", trace.SpanKind.SERVER)
    return result.decision.is_sampled()


@pytest.mark.parametrize("name", sorted(SDK))
@settings(max_examples=300, deadline=None)
@given(
    parent=st.none() | st.booleans(),
    trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1),
)
def test_the_decision_is_the_sdks(name: str, parent: bool | None, trace_id: int) -> None:
    ours = sampler_from_env({"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert ours(parent, trace_id) == _sdk_decision(SDK[name], parent, trace_id)


def test_ratio_edges_and_bad_input_fall_back_like_before() -> None:
    never = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    )
    always = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}
    )
    bad = sampler_from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"})
    unknown = sampler_from_env({"OTEL_TRACES_SAMPLER": "nonsense"})
    top = (1 << 64) - 1
    assert not never(None, top)
    assert not never(None, 1)
    assert always(None, top)
    assert always(None, 1)
    assert bad(None, top)  # an unreadable ratio is 1.0, with a warning
    assert unknown(None, 5)
    assert not unknown(False, 5)
