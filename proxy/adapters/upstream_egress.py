"""Egress through a forward proxy: which proxy an origin uses, and the way through it.

Decided once per upstream pool, at start (``egress_for``), never per request:
``PROXY_URL`` of the endpoint or upstream (``none``: direct), else ``HTTPS_PROXY`` /
``HTTP_PROXY`` by the origin's scheme (lower case wins over upper case, as in curl and
urllib) unless ``NO_PROXY`` matches the origin (``NoProxy``). ADR 0090.

The way through (``open_via_proxy``, the pool's connect step for a proxied pool): an
``https`` origin gets a ``CONNECT host:port`` tunnel, then TLS to the origin inside it
(``loop.start_tls``, certificate and host name verified); an ``http`` origin gets a plain
connection to the proxy and absolute-form request targets (the pool's ``host_line`` then
carries ``Proxy-Authorization``). Either way the result is an ``Http11Connection``, pooled
and kept alive like a direct one. The proxy's own failures (refused, timed out, a CONNECT
answered other than 2xx, 407 included) are ``BadGateway(code="egress_proxy_error")``; no
message names the proxy's URL or credentials.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from proxy.core.errors import BadGateway

CONNECT_HEAD_LIMIT = 16 * 1024
"""Bytes of a CONNECT answer's head read at most: a proxy's answer is a few lines."""
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


class _ConnectAnswer(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT``, up to the end of its head."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.trailing = False
        """Bytes followed the head (a refusal's body; after a 2xx, the origin too early)."""
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            self.trailing = True
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.trailing = end + 4 < len(self._buffer)
            self.head.set_result(bytes(self._buffer[: end + 4]))
        elif len(self._buffer) > CONNECT_HEAD_LIMIT:
            self.head.set_result(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_result(b"")


def _status(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return (
        int(line[1])
        if len(line) > 1 and line[0].startswith(b"HTTP/1.") and line[1].isdigit()
        else 0
    )


def proxy_refused(name: str, status: int = 407) -> BadGateway:
    """The proxy answered 407 (tinyproxy: 401 to CONNECT): credentials missing or wrong."""
    return _proxy_failed(name, f"the proxy refused its credentials ({status})")


def _proxy_failed(name: str, why: str) -> BadGateway:
    return BadGateway(
        f"Upstream {name!r} could not be reached through the egress proxy: {why}.",
        code="egress_proxy_error",
        sent=False,
        outcome="unreachable",
    )


async def open_via_proxy(
    proxy: ForwardProxy,
    factory: Callable[[], asyncio.Protocol],
    *,
    name: str,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
) -> asyncio.Protocol:
    """A connection to ``host:port`` through ``proxy``, with ``factory``'s protocol on it.

    ``tls`` set: a ``CONNECT`` tunnel with TLS to the origin inside; unset: a connection
    to the proxy itself (absolute-form requests). Timeouts, refusals and answers from the
    proxy are ``egress_proxy_error``; the origin's TLS failing or timing out inside the
    tunnel is the origin's (``OSError`` / ``TimeoutError``, translated by the pool).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout
    if tls is None:
        try:
            async with asyncio.timeout_at(deadline):
                _, protocol = await loop.create_connection(factory, proxy.host, proxy.port)
        except TimeoutError:
            raise _proxy_failed(name, "the proxy did not accept a connection in time") from None
        except OSError:
            raise _proxy_failed(name, "the proxy refused or failed the connection") from None
        return protocol
    answer = _ConnectAnswer()
    transport: asyncio.Transport | None = None
    try:
        try:
            async with asyncio.timeout_at(deadline):
                transport, _ = await loop.create_connection(lambda: answer, proxy.host, proxy.port)
                literal = f"[{host}]" if ":" in host else host
                request = f"CONNECT {literal}:{port} HTTP/1.1\r\nHost: {literal}:{port}\r\n"
                if proxy.authorization is not None:
                    request += f"Proxy-Authorization: {proxy.authorization}\r\n"
                transport.write((request + "\r\n").encode())
                head = await answer.head
        except TimeoutError:
            raise _proxy_failed(name, "the proxy did not answer CONNECT in time") from None
        except OSError:
            raise _proxy_failed(name, "the proxy refused or failed the connection") from None
        status = _status(head)
        if status in (401, 407):
            raise proxy_refused(name, status)
        if not 200 <= status < 300:
            raise _proxy_failed(name, f"the proxy answered CONNECT with {status or 'garbage'}")
        if answer.trailing:  # the origin must not speak before our TLS hello
            raise _proxy_failed(name, "the proxy sent bytes after its CONNECT answer")
        protocol = factory()
        async with asyncio.timeout_at(deadline):
            tunnelled = await loop.start_tls(
                transport,
                protocol,
                tls,
                server_hostname=host,
            )
        assert tunnelled is not None
        protocol.connection_made(tunnelled)
        return protocol
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
