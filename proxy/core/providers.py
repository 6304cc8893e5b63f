"""What each kind of provider wants of a request, as data the router and dispatcher read.

A kind differs from another only in the rows below: the header its key goes in, the
headers it requires when the caller sent none, whether its streams take
``stream_options.include_usage``, and (Azure) the deployment path ``/v1/...`` requests
map to. Nothing else in the request path branches on the kind; usage is read by shape
(``proxy.core.usage``), so limits, breakers, retries, metrics, spans and logs treat
every kind alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["openai", "azure", "anthropic"]

ANTHROPIC_VERSION: Final = "2023-06-01"
"""Sent to Anthropic when the caller named no ``anthropic-version`` (the SDK always does)."""
AZURE_API_VERSION: Final = "2024-10-21"
"""Azure OpenAI's data-plane GA version used when ``API_VERSION`` is not set."""


@dataclass(slots=True, frozen=True)
class Provider:
    """One kind of upstream."""

    kind: Kind
    auth_header: str
    """The header the provider key goes in."""
    auth_scheme: str
    """Put before the key in that header (``"Bearer "`` or nothing)."""
    api_path: str
    """Where ``/v1/...`` requests go below the origin when ``OPENAI_PATH`` is not set."""
    default_headers: tuple[tuple[str, str], ...] = ()
    """Added upstream when the caller sent no header of that name."""
    stream_usage: bool = True
    """Its streams take ``stream_options.include_usage`` (Anthropic reports usage anyway)."""
    deployments: bool = False
    """``/v1/<rest>`` with a model goes to ``/openai/deployments/<model>/<rest>?api-version``."""

    def credential(self, secret: str) -> tuple[str, str]:
        """The ``(header, value)`` that carries ``secret`` to this provider."""
        return self.auth_header, self.auth_scheme + secret


PROVIDERS: Final[Mapping[Kind, Provider]] = {
    "openai": Provider("openai", "Authorization", "Bearer ", "/v1"),
    "azure": Provider("azure", "api-key", "", "/openai", deployments=True),
    "anthropic": Provider(
        "anthropic",
        "x-api-key",
        "",
        "/v1",
        default_headers=(("anthropic-version", ANTHROPIC_VERSION),),
        stream_usage=False,
    ),
}
