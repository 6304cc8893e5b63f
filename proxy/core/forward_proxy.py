"""Which forward proxy an upstream origin leaves through, if any (ADR 0090): pure data.

Decided once per upstream pool, at start (``egress_for``), never per request:
``PROXY_URL`` of the endpoint or upstream (``none``: direct), else ``HTTPS_PROXY`` /
``HTTP_PROXY`` by the origin's scheme (lower case wins over upper case, as in curl and
urllib) unless ``NO_PROXY`` matches the origin (``NoProxy``). Settings validate proxy URLs
with the same ``parse_proxy_url``; the way through a proxy (the ``CONNECT`` tunnel) is the
transport's, in ``proxy.adapters.upstream_egress``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NET = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, repr=False)
class ForwardProxy:
    """An ``http://`` forward proxy; ``authorization`` is the whole ``Basic ...`` value."""

    host: str
    port: int
    authorization: str | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"ForwardProxy({self.host}:{self.port}, auth={self.authorization is not None})"


@dataclass(frozen=True, slots=True)
class Egress:
    """How one pool leaves: through ``proxy`` (or directly), trusting ``ca_file`` too."""

    proxy: ForwardProxy | None = None
    ca_file: str | None = None


def parse_proxy_url(url: str) -> ForwardProxy:
    """``http://[user:pass@]host[:port]`` (userinfo may be percent-encoded); else ``ValueError``.

    A bare ``host:port`` is read as ``http://host:port``, as curl does. Messages never
    quote the URL (it may hold a password).
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or 80
        host = parts.hostname
    except ValueError:
        raise ValueError("must be an http:// proxy URL with a valid port") from None
    if parts.scheme.lower() != "http":
        raise ValueError(
            "must be an http:// proxy URL (https:// and socks proxies are not supported)"
        )
    if not host:
        raise ValueError("must be an http:// proxy URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be a proxy origin, without a path, query or fragment")
    authorization = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in pair):
            raise ValueError("proxy credentials must not contain control characters")
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return ForwardProxy(host, port, authorization)


class NoProxy:
    """``NO_PROXY`` rules: ``*``, host names and domain suffixes (with or without a leading
    dot), any of them with ``:port``, IP addresses and CIDR ranges; case-insensitive."""

    __slots__ = ("_everything", "_names", "_networks")

    def __init__(self, value: str) -> None:
        self._everything = False
        self._names: list[tuple[str, int | None]] = []
        self._networks: list[tuple[_NET, int | None]] = []
        for raw in value.replace(" ", ",").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self._everything = True
                continue
            host, port = _split_port(entry)
            try:
                self._networks.append((ipaddress.ip_network(host.strip("[]"), strict=False), port))
            except ValueError:
                self._names.append((host.lstrip(".").rstrip("."), port))

    def matches(self, host: str, port: int) -> bool:
        """Whether ``host:port`` goes direct."""
        if self._everything:
            return True
        name = host.lower().strip("[]").rstrip(".")
        address: _IP | None
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        for network, only in self._networks:
            if address is not None and address in network and only in (None, port):
                return True
        for suffix, only in self._names:
            if (name == suffix or name.endswith("." + suffix)) and only in (None, port):
                return True
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, a bare IPv6 address, a CIDR range, or a host."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def _environment(environ: Mapping[str, str], name: str) -> str | None:
    """``name`` in lower case, else upper case; an empty value counts as unset."""
    return environ.get(name.lower()) or environ.get(name.upper()) or None


def environment_problem(origin: str, environ: Mapping[str, str]) -> str | None:
    """``VARIABLE: problem`` when the proxy variable ``origin`` would use is unusable."""
    scheme = "https" if origin.startswith("https:") else "http"
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        if environ.get(name):
            try:
                egress_for(origin, None, environ)
            except ValueError as exc:
                return f"{name}: {exc}"
            return None
    return None


def egress_for(
    origin: str,
    proxy_url: str | None,
    environ: Mapping[str, str],
    ca_file: str | None = None,
) -> Egress:
    """How connections to ``origin`` leave: ``proxy_url`` (``none``: direct) or the environment."""
    if proxy_url is not None:
        if proxy_url.strip().lower() == "none":
            return Egress(None, ca_file)
        return Egress(parse_proxy_url(proxy_url), ca_file)
    parts = urlsplit(origin)
    secure = parts.scheme == "https"
    chosen = _environment(environ, "https_proxy" if secure else "http_proxy")
    if chosen is None:
        return Egress(None, ca_file)
    port = parts.port or (443 if secure else 80)
    if NoProxy(_environment(environ, "no_proxy") or "").matches(parts.hostname or "", port):
        return Egress(None, ca_file)
    return Egress(parse_proxy_url(chosen), ca_file)
