"""The yardstick: a minimal aiohttp + uvloop reverse proxy, naive but reasonable.

One long-lived ClientSession; each request is read whole, sent upstream with the caller's
headers (hop-by-hop, Host and Authorization dropped, the upstream key set), and the
response is copied back through a StreamResponse chunk by chunk as it arrives.
No auth, no limits, no metrics, no logs, no tracing: what "just proxy it" costs.

``python -m bench.passthrough --port P --upstream openai=http://127.0.0.1:N [...]``;
``/<name>/<rest>`` goes to ``<base of name>/<rest>``, as on the sidecar.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_SENT = _HOP_BY_HOP | {"host", "authorization", "content-length"}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length"}
SESSION = web.AppKey("session", aiohttp.ClientSession)


def build_app(upstreams: dict[str, str], upstream_key: str) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        name, _, rest = request.path[1:].partition("/")
        base = upstreams.get(name)
        if base is None:
            raise web.HTTPNotFound()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_SENT}
        headers["Authorization"] = f"Bearer {upstream_key}"
        url = f"{base}/{rest}"
        if request.query_string:
            url += "?" + request.query_string
        session = request.app[SESSION]
        async with session.request(request.method, url, headers=headers, data=body) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _NOT_RETURNED:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        )
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="naive aiohttp passthrough (bench yardstick)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", default=[], help="NAME=BASE_URL")
    parser.add_argument("--upstream-key", default="sk-bench-upstream")
    args = parser.parse_args()
    upstreams = dict(item.split("=", 1) for item in args.upstream)
    web.run_app(
        build_app(upstreams, args.upstream_key),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
