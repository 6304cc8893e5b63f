"""What the sidecar itself answers and forwards: errors, headers, correlation ids."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.conftest import OPENAI_PROVIDER_KEY
from tests.e2e.conftest import RunningSidecar
from tests.support.fake_upstream import FakeUpstream
from tests.support.sidecar import http_get

CHAT = "/openai/v1/chat/completions"


def _auth(sidecar: RunningSidecar) -> dict[str, str]:
    return {"Authorization": f"Bearer {sidecar.key}", "Content-Type": "application/json"}


async def _post(
    sidecar: RunningSidecar, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    async with (
        aiohttp.ClientSession() as session,
        session.post(sidecar.url + path, data=body, headers=headers) as response,
    ):
        payload = await response.json(content_type=None)
        return response.status, dict(response.headers), payload


def _assert_openai_error(payload: dict, code: str) -> None:  # type: ignore[type-arg]
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] is None


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("hang", 504, "upstream_timeout"),
        ("reset", 502, "upstream_reset"),
        ("garbage", 502, "bad_gateway"),
    ],
)
async def test_upstream_failures_become_openai_errors(
    sidecar: RunningSidecar, upstream: FakeUpstream, model: str, status: int, code: str
) -> None:
    """A hanging, resetting or garbage-speaking upstream gives 504/502 in the OpenAI shape."""
    started = time.monotonic()
    got, headers, payload = await _post(
        sidecar, CHAT, b'{"model": "%s", "messages": []}' % model.encode(), _auth(sidecar)
    )
    assert got == status
    _assert_openai_error(payload, code)
    assert headers["X-Correlation-ID"]
    assert time.monotonic() - started < 5


async def test_unknown_upstream_is_404(sidecar: RunningSidecar) -> None:
    """An unknown upstream prefix is a 404 in the OpenAI shape with a correlation id."""
    got, headers, payload = await _post(sidecar, "/nope/v1/chat", b"{}", _auth(sidecar))
    assert got == 404
    _assert_openai_error(payload, "unknown_upstream")
    assert headers["X-Correlation-ID"]


async def test_missing_key_is_401(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """No Authorization header: 401, and the upstream is never contacted."""
    got, _, payload = await _post(sidecar, CHAT, b"{}", {"Content-Type": "application/json"})
    assert got == 401
    _assert_openai_error(payload, "invalid_api_key")
    assert upstream.received == []


async def test_body_over_limit_is_413(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """A body over LLM_SIDECAR_MAX_BODY_BYTES is refused with 413 before the upstream."""
    body = b'{"model": "x", "pad": "' + b"a" * (512 * 1024) + b'"}'
    got, _, payload = await _post(sidecar, CHAT, body, _auth(sidecar))
    assert got == 413
    _assert_openai_error(payload, "request_too_large")
    assert upstream.received == []


async def test_invalid_json_is_400(sidecar: RunningSidecar, upstream: FakeUpstream) -> None:
    """A JSON content type with a body that is not JSON gets 400 on /v1."""
    got, _, payload = await _post(sidecar, "/v1/chat/completions", b"{nope", _auth(sidecar))
    assert got == 400
    _assert_openai_error(payload, "invalid_json")


async def test_hop_by_hop_and_credentials_do_not_cross(
    sidecar: RunningSidecar, upstream: FakeUpstream
) -> None:
    """Hop-by-hop headers (and those named in Connection) and the caller's key stay behind."""
    headers = {
        **_auth(sidecar),
        "Connection": "keep-alive, X-Hop-Secret",
        "X-Hop-Secret": "must-not-cross",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Upgrade": "h2c",
        "Host": "evil.example",
        "X-End-To-End": "kept",
    }
    got, response_headers, _ = await _post(
        sidecar, CHAT, b'{"model": "gpt-test", "messages": []}', headers
    )
    assert got == 200
    (seen,) = upstream.received
    for name in ("x-hop-secret", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in seen.headers, name
    assert seen.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert seen.headers["x-end-to-end"] == "kept"
    assert seen.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
    assert sidecar.key not in repr(seen.raw_headers) + seen.body.decode()
    assert (
        "Transfer-Encoding" not in response_headers
        or response_headers.get("Content-Length") is None
    )


async def test_correlation_id_kept_or_replaced(
    sidecar: RunningSidecar, upstream: FakeUpstream
) -> None:
    """A valid X-Correlation-ID is kept end to end; an invalid one is replaced."""
    body = b'{"model": "gpt-test", "messages": []}'
    _, headers, _ = await _post(
        sidecar, CHAT, body, {**_auth(sidecar), "X-Correlation-ID": "order-42:retry.1"}
    )
    assert headers["X-Correlation-ID"] == "order-42:retry.1"
    assert upstream.received[-1].headers["x-correlation-id"] == "order-42:retry.1"
    _, headers, _ = await _post(
        sidecar, CHAT, body, {**_auth(sidecar), "X-Correlation-ID": "bad id with spaces"}
    )
    assert headers["X-Correlation-ID"] != "bad id with spaces"
    assert len(headers["X-Correlation-ID"]) == 32


def test_ops_listener(sidecar: RunningSidecar) -> None:
    """/healthz and /readyz answer 200 and /metrics carries the request counter."""
    admin = sidecar.process.admin_url
    assert '"ok"' in http_get(admin + "/healthz")
    assert '"ready"' in http_get(admin + "/readyz")
    metrics = http_get(admin + "/metrics")
    assert "llm_sidecar_requests_total" in metrics
    assert "llm_sidecar_circuit_breaker_state" in metrics


async def test_head_answers_keep_the_upstreams_length(sidecar: RunningSidecar) -> None:
    """A HEAD through the sidecar carries the Content-Length the upstream gave, and no body."""
    async with aiohttp.ClientSession() as session:
        async with session.get(sidecar.url + "/openai/v1/models", headers=_auth(sidecar)) as got:
            length = len(await got.read())
        async with session.head(sidecar.url + "/openai/v1/models", headers=_auth(sidecar)) as head:
            assert head.status == 200
            assert head.headers["Content-Length"] == str(length)
            assert await head.read() == b""
