"""Routing over hostile raw paths and model names: a request only ever reaches a configured
upstream, under its base path, with its query intact (no SSRF, no climbing out).

"Under its base path" is judged the way the most lenient server behind an upstream could
read the path: ``%2e`` as ``.``, ``%2f``, ``%5c`` and ``\\`` as ``/``, ``#`` as a
separator and ``;params`` cut off a segment (Tomcat's ``..;``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.core.errors import BadRequest, UnknownUpstream
from proxy.core.routing import Route, Router, Upstream
from tests.unit.fuzz.budget import fuzz


def _upstream(name: str, base_url: str, openai_path: str) -> Upstream:
    # Built the way the composition root builds it from validated settings.
    return Upstream(name, base_url, base_url + openai_path)


UPSTREAMS = {
    u.name: u
    for u in (
        _upstream("openai", "https://api.openai.com", "/v1"),
        _upstream("groq", "https://api.groq.com", "/openai/v1"),
        _upstream("vllm", "http://10.0.0.5:8000/base", "/v1"),
        _upstream("azure-east_2", "https://x.openai.azure.com/openai/deployments/gpt", ""),
    )
}
ROUTER = Router(UPSTREAMS, "openai")

BENIGN = ["v1", "chat", "completions", "models", "files", "a.b", "~", "=", "&", "v1x", "\u00e9"]
DOTS = [".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2E", "..;", ".;x", "..\\", "%2e.#"]
TRICKS = ["", "%2f", "%2F", "%5c", "%5C", "\\", "@", "evil.com", "user@evil.com", "%40", "#",
          "#frag", ";", "http:", "https://evil.com", "localhost:80", "%00", "%", "%2"]  # fmt: skip
NEAR_MISSES = ["v1", "OpenAI", "openai.", "openai@evil.com", "v1x", "", "groq%2f", "vllm\\..",
               "vllm;x", "%6fpenai", "evil.com", "127.0.0.1:80", "openai#x"]  # fmt: skip
separators = ["/"] * 12 + ["//", "\\", "/./", "/../"]


def _weighted(draw: st.DrawFn, common: list[str], *rare: list[str]) -> str:
    """Mostly ``common`` (3 in 4), so enough paths survive to be routed and checked."""
    pool = common if draw(st.integers(0, 3)) else draw(st.sampled_from(rare))
    return draw(st.sampled_from(pool))


@st.composite
def raw_paths(draw: st.DrawFn, firsts: tuple[str, ...] = ()) -> str:
    """Origin-form targets built from hostile pieces, absolute-form URLs, or any text."""
    kind = draw(st.integers(0, 9))
    if kind == 0 and not firsts:
        host = draw(st.sampled_from(["evil.com", "api.openai.com", "10.0.0.5:8000", "[::1]"]))
        return f"http://{host}/" + "/".join(draw(st.lists(st.sampled_from(TRICKS), max_size=4)))
    if kind == 1 and not firsts:
        return "/" + draw(st.text(max_size=40))
    path = "/" + _weighted(draw, list(firsts or UPSTREAMS), NEAR_MISSES)
    for _ in range(draw(st.integers(0, 5))):
        path += _weighted(draw, ["/"], separators)
        path += draw(st.text(max_size=6)) if kind == 2 else _weighted(draw, BENIGN, DOTS, TRICKS)
    if draw(st.booleans()):
        path += "?" + draw(st.sampled_from(["", "x=1", "a/b", "/../x", "@evil.com", "?#"]))
    return path


models = st.none() | st.one_of(
    st.tuples(st.sampled_from([*UPSTREAMS, "GROQ", "unknown", "", "v1"]), st.text(max_size=12)).map(
        "/".join
    ),
    st.sampled_from(["gpt-4o", "groq", "openai/", "/gpt", "vllm/a/b", "http://evil.com/x"]),
    st.text(max_size=20),
)


def _lenient_segments(path: str) -> list[str]:
    lenient = path.lower().replace("%2e", ".")
    for separator in ("%2f", "%5c", "\\", "#"):
        lenient = lenient.replace(separator, "/")
    return [segment.partition(";")[0] for segment in lenient.split("/")]


def _climbs(path: str) -> bool:
    return any(segment in (".", "..") for segment in _lenient_segments(path))


def _expected(raw_path: str) -> tuple[str, str | None]:
    """The contract: ``("reject" | "openai-prefix" | "unknown" | "route", url)``."""
    path, mark, query = raw_path.partition("?")
    if _climbs(path):
        return "reject", None
    if path == "/v1" or path.startswith("/v1/"):
        return "openai-prefix", None
    name, slash, rest = path[1:].partition("/")
    upstream = UPSTREAMS.get(name)
    if upstream is None or not raw_path.startswith("/"):
        return "unknown", None
    return "route", upstream.origin + ("/" + rest if slash else "") + mark + query


def _assert_contained(route: Route, raw_path: str) -> None:
    """Same scheme and authority as the upstream, under its path, the caller's query kept."""
    upstream, url = route.upstream, route.url
    assert UPSTREAMS[upstream.name] is upstream
    want, got = urlsplit(upstream.origin), urlsplit(url)
    assert (got.scheme, got.netloc) == (want.scheme, want.netloc), url
    assert url.startswith(upstream.origin)
    # What the HTTP/1.1 transport cuts off to make the request target. It starts with '?'
    # for ``/openai?x`` (``https://api.openai.com?x``, an empty path): the transport
    # sends that as ``/?x`` (RFC 9112 3.2.1).
    target = url[len(f"{want.scheme}://{want.netloc}") :]
    assert target == "" or target[0] in "/?", url
    path = url[len(upstream.origin) :].partition("?")[0]
    assert path == "" or path.startswith("/"), url
    assert not _climbs(path), url
    if "?" in raw_path:
        assert url.partition("?")[2] == raw_path.partition("?")[2]
    else:
        assert "?" not in url


@fuzz(600)
@given(raw_paths())
def test_by_prefix_routes_only_to_a_configured_upstream(raw_path: str) -> None:
    """A path routes exactly as the contract says; anything else is a 400 or a 404."""
    kind, url = _expected(raw_path)
    if kind == "reject":
        with pytest.raises(BadRequest) as rejected:
            ROUTER.by_prefix(raw_path)
        assert rejected.value.code == "invalid_path"
        return
    if kind == "unknown":
        with pytest.raises(UnknownUpstream):
            ROUTER.by_prefix(raw_path)
        return
    route = ROUTER.by_prefix(raw_path)
    if route is None:
        assert kind == "openai-prefix", raw_path
        return
    assert kind == "route", raw_path
    assert route.url == url
    assert not route.via_openai_prefix
    _assert_contained(route, raw_path)


v1_paths = raw_paths(("v1",))


@fuzz(250)
@given(v1_paths, models)
def test_by_model_picks_the_named_upstream_or_the_default(raw_path: str, model: str | None) -> None:
    """On /v1/..., a configured ``name/`` model prefix picks that upstream; else the default."""
    assume(_expected(raw_path)[0] == "openai-prefix")
    assert ROUTER.by_prefix(raw_path) is None
    route, bare = ROUTER.by_model(raw_path, model)
    name, separator, rest = (model or "").partition("/")
    if separator and name in UPSTREAMS:
        assert (route.upstream.name, bare) == (name, rest)
    else:
        assert (route.upstream.name, bare) == ("openai", None)
    assert route.via_openai_prefix
    assert route.url == route.upstream.openai_prefix + raw_path[len("/v1") :]
    _assert_contained(route, raw_path)


@fuzz(250)
@given(raw_paths() | v1_paths, models, st.sampled_from(sorted(UPSTREAMS)))
def test_fallback_stays_inside_the_fallback_upstream(
    raw_path: str, model: str | None, fallback_name: str
) -> None:
    """Re-sending a routed request to a fallback keeps it inside the fallback's origin."""
    kind, _ = _expected(raw_path)
    assume(kind in ("route", "openai-prefix"))
    route = ROUTER.by_prefix(raw_path) or ROUTER.by_model(raw_path, model)[0]
    fallback = UPSTREAMS[fallback_name]
    moved = ROUTER.with_upstream(route, fallback)
    assert moved.upstream is fallback
    assert moved.via_openai_prefix == route.via_openai_prefix
    _assert_contained(moved, raw_path)
    if route.via_openai_prefix:
        assert moved.url == fallback.openai_prefix + raw_path[len("/v1") :]


@pytest.mark.parametrize(
    ("raw_path", "url"),
    [
        ("/openai?x/y", "https://api.openai.com?x/y"),
        ("/vllm/v1/models?q=a/b", "http://10.0.0.5:8000/base/v1/models?q=a/b"),
    ],
)
def test_a_slash_in_the_query_stays_in_the_query(raw_path: str, url: str) -> None:
    """Found by the fuzzer: ``/openai?x/y`` went to ``https://api.openai.com/y``."""
    route = ROUTER.by_prefix(raw_path)
    assert route is not None
    assert route.url == url


@pytest.mark.parametrize(
    "raw_path",
    ["/vllm/..\\admin", "/vllm/x%2f..%2fadmin", "/vllm/x%5C..", "/vllm/..;/admin",
     "/vllm/x/..#frag", "/v1/..%2f..%2fadmin"],
)  # fmt: skip
def test_dot_segments_in_disguise_are_rejected(raw_path: str) -> None:
    """Found by the fuzzer: '..' hidden behind '\\', %2f, %5c, ';' or '#' reached the upstream."""
    with pytest.raises(BadRequest):
        ROUTER.by_prefix(raw_path)


def test_fallback_keeps_a_lookalike_segment_whole() -> None:
    """Found by the fuzzer: ``/openai/v1x`` fell back to the ``.../deployments/gptx`` deployment."""
    route = ROUTER.by_prefix("/openai/v1x/chat")
    assert route is not None
    moved = ROUTER.with_upstream(route, UPSTREAMS["azure-east_2"])
    assert moved.url == "https://x.openai.azure.com/openai/deployments/gpt/v1x/chat"
