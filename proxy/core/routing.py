"""Where a request goes: ``/<upstream>/<rest>`` or ``/v1/<rest>`` routed by the model.

Everything derivable from settings (URL prefixes, the provider's Authorization value)
is computed once here, so routing a request is a split and a dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.core.errors import BadRequest, UnknownUpstream

OPENAI_COMPATIBLE_PREFIX = "/v1"
MODEL_PREFIX_SEPARATOR = "/"


@dataclass(slots=True, frozen=True)
class Upstream:
    """One provider, with everything a request to it needs precomputed.

    ``origin`` is that of its first endpoint: routes are built against it, and each
    endpoint puts its own origin in front of the route's ``target``.
    """

    name: str
    origin: str
    """``scheme://host[:port][/base-path]`` without a trailing slash."""
    openai_prefix: str
    """``origin`` + the provider's OpenAI-compatible path (``/v1``, ``/openai/v1``)."""
    fallback: str | None = None
    fallback_models: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Route:
    upstream: Upstream
    url: str
    via_openai_prefix: bool
    """``/v1/...`` request: the body's model chose the upstream and may be rewritten."""

    @property
    def target(self) -> str:
        """Path and query below the upstream's origin (``/v1/chat/completions``)."""
        return self.url[len(self.upstream.origin) :]


class Router:
    """Maps a received path (with query) to an upstream URL."""

    __slots__ = ("_default", "_upstreams")

    def __init__(self, upstreams: Mapping[str, Upstream], default: str) -> None:
        self._upstreams = dict(upstreams)
        self._default = self._upstreams[default]

    def upstream(self, name: str) -> Upstream:
        try:
            return self._upstreams[name]
        except KeyError:
            raise UnknownUpstream(f"Unknown upstream {name[:64]!r}.") from None

    def by_prefix(self, raw_path: str) -> Route | None:
        """Route ``/<upstream>/<rest>``; ``None`` for ``/v1/...`` (needs the body's model)."""
        _reject_dot_segments(raw_path)
        if raw_path.startswith(OPENAI_COMPATIBLE_PREFIX) and (
            len(raw_path) == 3 or raw_path[3] in "/?"
        ):
            return None
        name, slash, rest = raw_path[1:].partition("/")
        query = name.find("?")
        if query >= 0:  # ``/openai?x/y``: the slash is in the query, the path is ``/openai``
            name = name[:query]
            slash, rest = "", ""
        upstream = self.upstream(name)
        if not slash:
            rest = raw_path[1 + len(name) :]
            return Route(upstream, upstream.origin + rest, via_openai_prefix=False)
        return Route(upstream, f"{upstream.origin}/{rest}", via_openai_prefix=False)

    def by_model(self, raw_path: str, model: str | None) -> tuple[Route, str | None]:
        """Route ``/v1/<rest>``: a ``name/`` model prefix picks the upstream and is stripped.

        Returns the route and the model to send upstream (``None`` when unchanged).
        """
        rest = raw_path[len(OPENAI_COMPATIBLE_PREFIX) :]
        if model:
            name, sep, bare = model.partition(MODEL_PREFIX_SEPARATOR)
            upstream = self._upstreams.get(name) if sep else None
            if upstream is not None:
                return Route(upstream, upstream.openai_prefix + rest, True), bare
        upstream = self._default
        return Route(upstream, upstream.openai_prefix + rest, True), None

    def with_upstream(self, route: Route, upstream: Upstream) -> Route:
        """The same request sent to another upstream (fallback)."""
        if route.via_openai_prefix:
            suffix = route.url[len(route.upstream.openai_prefix) :]
            return Route(upstream, upstream.openai_prefix + suffix, True)
        suffix = route.url[len(route.upstream.origin) :]
        api_path = route.upstream.openai_prefix[len(route.upstream.origin) :]
        # Whole segments only (``/v1``, ``/v1/...``, ``/v1?...``): ``/v1x`` is not under ``/v1``.
        if suffix.startswith(api_path) and suffix[len(api_path) : len(api_path) + 1] in "/?":
            return Route(upstream, upstream.openai_prefix + suffix[len(api_path) :], False)
        return Route(upstream, upstream.origin + suffix, False)


# What some server behind an upstream may read as a path separator before it resolves dot
# segments: WHATWG URL parsers take '\\' for '/', others decode %2F or %5C first, and a
# stray '#' ends the path for those that parse the target as a URL.
_LENIENT_SEPARATORS = ("%2f", "%5c", "\\", "#")


def _reject_dot_segments(raw_path: str) -> None:
    # A ``..`` segment could climb out of an upstream's base path; no API needs one.
    path = raw_path.partition("?")[0]
    if "." in path or "%" in path:  # a dot segment needs one of them: most paths skip the rest
        lenient = path.lower().replace("%2e", ".")
        for separator in _LENIENT_SEPARATORS:
            lenient = lenient.replace(separator, "/")
        for segment in lenient.split("/"):
            # ``..;x`` is ``..`` to servlet containers (path parameters).
            if segment.partition(";")[0] in (".", ".."):
                raise BadRequest(
                    "Paths with '.' or '..' segments are not proxied.", code="invalid_path"
                )
