"""Where a request goes: ``/<upstream>/<rest>`` or ``/v1/<rest>`` routed by the model.

Everything derivable from settings (URL prefixes, the provider's headers) is computed
once here, so routing a request is a split and a dict lookup. An Azure upstream maps
``/v1/<rest>`` to its deployment path ``/openai/deployments/<model>/<rest>?api-version=``
(the model is the deployment's name); ``/<upstream>/<rest>`` passes through for every kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.core.errors import BadRequest, UnknownUpstream

OPENAI_COMPATIBLE_PREFIX = "/v1"
MODEL_PREFIX_SEPARATOR = "/"
DEPLOYMENTS_PATH = "/openai/deployments/"
API_VERSION_PARAMETER = "api-version"
# Azure's rule for deployment names (2-64 of these): nothing that could leave the path.
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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
    kind: str = "openai"
    """The provider kind (``proxy.core.providers``): spans and metrics name it."""
    default_headers: tuple[tuple[str, str], ...] = ()
    """Sent upstream when the caller sent no header of that name (``anthropic-version``)."""
    stream_usage: bool = True
    """Streams may be given ``stream_options.include_usage``."""
    deployment_prefix: str | None = None
    """Azure: ``origin/openai/deployments/``, where ``/v1/...`` requests with a model go."""
    api_query: str = ""
    """Azure: ``api-version=...``, added to ``/v1/...`` requests that name none."""


@dataclass(slots=True, frozen=True)
class Route:
    upstream: Upstream
    url: str
    via_openai_prefix: bool
    """``/v1/...`` request: the body's model chose the upstream and may be rewritten."""
    api_rest: str = ""
    """``/v1/...`` request: what followed ``/v1`` (path and query), for a fallback."""

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
                return Route(upstream, api_url(upstream, rest, bare), True, rest), bare
        upstream = self._default
        return Route(upstream, api_url(upstream, rest, model), True, rest), None

    def with_upstream(self, route: Route, upstream: Upstream, model: str | None = None) -> Route:
        """The same request sent to another upstream (fallback) for ``model``."""
        if route.via_openai_prefix:
            rest = route.api_rest
            return Route(upstream, api_url(upstream, rest, model), True, rest)
        suffix = route.url[len(route.upstream.origin) :]
        api_path = route.upstream.openai_prefix[len(route.upstream.origin) :]
        # Whole segments only (``/v1``, ``/v1/...``, ``/v1?...``): ``/v1x`` is not under ``/v1``.
        if suffix.startswith(api_path) and suffix[len(api_path) : len(api_path) + 1] in "/?":
            return Route(upstream, upstream.openai_prefix + suffix[len(api_path) :], False)
        return Route(upstream, upstream.origin + suffix, False)


def api_url(upstream: Upstream, rest: str, model: str | None) -> str:
    """Where ``/v1<rest>`` goes on ``upstream`` for ``model``."""
    prefix = upstream.deployment_prefix
    if prefix is None:
        return upstream.openai_prefix + rest
    path, _, query = rest.partition("?")
    if model:
        if _DEPLOYMENT.fullmatch(model) is None:
            raise BadRequest(
                f"{model[:64]!r} is not an Azure deployment name.", code="invalid_model"
            )
        url = prefix + model + path
    else:  # no model, no deployment: ``/openai/models`` and the like
        url = upstream.openai_prefix + path
    if not query:
        return f"{url}?{upstream.api_query}"
    names = (pair.partition("=")[0] for pair in query.split("&"))
    if API_VERSION_PARAMETER in names:  # the caller chose the version
        return f"{url}?{query}"
    return f"{url}?{query}&{upstream.api_query}"


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
