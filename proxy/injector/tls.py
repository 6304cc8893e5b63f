"""The webhook's TLS key pair, re-read when cert-manager (or an operator) renews it.

The server is handed :attr:`CertificateReloader.context` once. Its SNI callback, which
OpenSSL calls for every ClientHello (with or without a server name), points the handshake
at the newest pair that loaded cleanly. A reload loads the files into a *fresh* context
and swaps it in only when that succeeded: loading into the serving context would replace
its certificate before the key is checked, and a half-written or mismatched pair would
then fail every handshake until the next good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

RELOAD_INTERVAL = 30.0  # seconds between looks at the files' stamps
_log = structlog.get_logger("llm_sidecar.injector")
_UNREADABLE: tuple[int, ...] = ()  # the stamp of files that cannot be stat'ed


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ server context holding the key pair; raises ``OSError``/``ssl.SSLError``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key would make OpenSSL prompt on the terminal: fail instead.
    context.load_cert_chain(cert, key, password=_no_password)
    return context


def _no_password() -> str:
    raise ssl.SSLError("the private key is encrypted; the webhook needs it unencrypted")


class CertificateReloader:
    """Serves the key pair in ``cert``/``key`` and swaps in a renewed one that loads.

    Raises ``OSError`` or ``ssl.SSLError`` at construction if the first pair does not
    load. New handshakes get the current pair; open connections keep theirs.
    """

    __slots__ = ("_cert", "_current", "_failed", "_key", "_stamp", "context")

    context: ssl.SSLContext
    """The context to serve with; it delegates each handshake to the current pair."""

    def __init__(self, cert: str, key: str) -> None:
        self._cert, self._key = cert, key
        self._stamp = self._read_stamp()
        self._failed: tuple[int, ...] | None = None
        self._current = server_ssl_context(cert, key)
        self.context = server_ssl_context(cert, key)
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, _name: str, _context: ssl.SSLContext) -> None:
        connection.context = self._current

    def _read_stamp(self) -> tuple[int, ...]:
        cert, key = os.stat(self._cert), os.stat(self._key)
        return (cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size)

    def check(self) -> bool:
        """Reload if the files changed; True when a new pair is now served."""
        try:
            stamp = self._read_stamp()
        except OSError as exc:
            return self._keep_serving(_UNREADABLE, exc)
        if stamp == self._stamp:
            self._failed = None
            return False
        if stamp == self._failed:
            return False  # the same broken files: said so already
        try:
            fresh = server_ssl_context(self._cert, self._key)
        except (OSError, ssl.SSLError) as exc:
            return self._keep_serving(stamp, exc)
        self._current, self._stamp, self._failed = fresh, stamp, None
        _log.info("tls key pair reloaded")
        return True

    def _keep_serving(self, stamp: tuple[int, ...], exc: OSError) -> bool:
        # Mid-rotation the pair may be half-written or mismatched; it is retried when the
        # files change again. The reason is OpenSSL's or the OS's, never file contents.
        if stamp != self._failed:
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            _log.warning(
                "tls reload failed, serving the previous key pair",
                error=type(exc).__name__,
                reason=reason,
            )
        self._failed = stamp
        return False

    def watcher(
        self, interval: float = RELOAD_INTERVAL
    ) -> Callable[[web.Application], AsyncIterator[None]]:
        """A ``cleanup_ctx`` entry that calls :meth:`check` every ``interval`` seconds."""

        async def watch(app: web.Application) -> AsyncIterator[None]:
            async def loop() -> None:
                while True:
                    await asyncio.sleep(interval)
                    self.check()

            task = asyncio.create_task(loop())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return watch
