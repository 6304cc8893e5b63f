"""The hand-written OTLP protobuf against the SDK's encoder, fed the same request records.

``OtlpEncoder`` must produce the message the SDK's ``encode_spans`` makes from the
``ReadableSpan``s of the same records; both are parsed with opentelemetry-proto and
compared field by field (attribute order included). Hypothesis draws few distinct
values, so runs of attributes repeat across the records of a batch and hit the cache.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from proxy.adapters.otlp_protobuf import OtlpEncoder
from proxy.adapters.readable_spans import ReadableSpanBuilder
from proxy.adapters.span_records import AttemptRecord, RequestRecord

RESOURCE = Resource.create(
    {"service.name": "llm-sidecar", "deployment.replica": 3, "ratio": 0.5, "canary": False}
)
NAMES = st.text(min_size=1, max_size=12)
IDS = st.integers(min_value=1, max_value=(1 << 64) - 1)
CLOCK = st.integers(min_value=1, max_value=(1 << 63) - 1)


@st.composite
def attempts(draw: st.DrawFn) -> AttemptRecord:
    attempt = AttemptRecord(
        draw(IDS),
        draw(CLOCK),
        draw(st.sampled_from(["POST", "GET"])),
        draw(st.sampled_from(["http://127.0.0.1:9/v1/chat/completions", "https://api.x.ai/v1"])),
        draw(st.sampled_from(["openai", "anthropic", "my-vllm"])),
        draw(st.none() | st.sampled_from(["chat", "embeddings"])),
        draw(st.none() | NAMES),
        draw(st.integers(0, 4)),
    )
    attempt.end_ns = draw(CLOCK)
    attempt.response_model = draw(st.none() | NAMES)
    attempt.response_id = draw(st.none() | NAMES)
    attempt.input_tokens = draw(st.none() | st.integers(0, 1 << 40))
    attempt.output_tokens = draw(st.none() | st.integers(0, 1 << 40))
    attempt.status_code = draw(st.none() | st.integers(100, 599))
    attempt.outcome = draw(st.none() | st.sampled_from(["503", "connect_error", "timeout"]))
    return attempt


@st.composite
def requests(draw: st.DrawFn) -> RequestRecord:
    request = RequestRecord(
        draw(st.integers(min_value=1, max_value=(1 << 128) - 1)),
        draw(IDS),
        draw(st.just(0) | IDS),
        draw(st.sampled_from(["", "vendor=abc", "a=1,b=2"])),
        True,
        draw(CLOCK),
        draw(st.sampled_from(["POST", "GET", "_OTHER"])),
        draw(st.sampled_from(["/openai/v1/chat/completions", "/", "/caf\u00e9"])),
        draw(NAMES),
    )
    request.end_ns = draw(CLOCK)
    request.status = draw(st.integers(100, 599))
    request.tenant = draw(st.none() | NAMES)
    request.upstream = draw(st.none() | NAMES)
    request.cost_usd = draw(st.none() | st.floats(0, 100, allow_nan=False))
    request.attempts = draw(st.lists(attempts(), max_size=3))
    return request


def _both(
    records: list[RequestRecord],
) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    encoder = OtlpEncoder(RESOURCE.attributes.items())
    first = encoder.encode(records)
    assert encoder.encode(records) == first  # the second time every run comes from the cache
    ours = ExportTraceServiceRequest.FromString(first)
    sdk = encode_spans(ReadableSpanBuilder(RESOURCE).build(records))
    return ours, sdk


@settings(max_examples=150, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=4))
def test_encoder_writes_what_the_sdk_encodes(records: list[RequestRecord]) -> None:
    ours, sdk = _both(records)
    assert ours == sdk


def test_a_retried_request_is_one_server_span_and_a_client_span_per_attempt() -> None:
    request = RequestRecord(0xABC, 0x1, 0x2, "vendor=abc", True, 10, "POST", "/v1/x", "cid")
    request.status = 200
    failed = AttemptRecord(0x10, 11, "POST", "http://a:1/v1/x", "openai", "chat", "m", 0)
    failed.outcome = "503"
    request.attempts = [
        failed,
        AttemptRecord(0x11, 12, "POST", "http://b/v1", "openai", None, None, 1),
    ]
    ours, sdk = _both([request])
    assert ours == sdk
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert [span.kind for span in spans] == [2, 3, 3]
    assert [span.status.code for span in spans] == [0, 2, 0]
    assert spans[0].flags == 0x300  # the caller's parent is remote
    assert spans[1].parent_span_id == spans[2].parent_span_id == spans[0].span_id
    assert ours.resource_spans[0].scope_spans[0].scope.name == "llm_sidecar"
