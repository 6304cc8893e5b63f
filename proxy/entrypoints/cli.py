"""``llm-sidecar``: the one console script (also ``python -m proxy``).

Errors go to stderr as one human line each; exit 2 for bad input or config, 1 for a
runtime failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr

from proxy.entrypoints import cli_admin, cli_spend
from proxy.settings import Settings, SettingsError, load_settings

EXIT_USAGE = 2
MASK_WHOLE: Final = "**********"  # what pydantic prints for a SecretStr
MASK_IN_URL: Final = "***"  # postgresql://user:***@host/db, as SQLAlchemy writes it
# Query parameters whose values are credentials (libpq and redis-py read ?password=...).
_SECRET_QUERY_HINTS: Final = ("pass", "secret", "token", "key", "auth", "cred", "sig")


def _serve(_args: argparse.Namespace, settings: Settings) -> int:
    from proxy.adapters.logging_structlog import configure_logging
    from proxy.entrypoints.serve import serve

    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)


def _check_config(_args: argparse.Namespace, settings: Settings) -> int:
    effective = masked(settings.model_dump())
    text = orjson.dumps(effective, default=str, option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(text + "\n")
    return 0


def masked(value: Any) -> Any:
    """``value`` fit to print: secrets masked, URLs shown with their credentials masked.

    A ``SecretStr`` prints as ``**********``, unless it holds a URL (``REDIS_URL``): then
    as that URL with its password masked. Any URL (``DATABASE_URL``, an upstream's
    ``BASE_URL``, a proxy URL) loses its userinfo password and credential-like query
    values (``?password=``, ``?token=``...); a URL that does not parse is masked whole.
    """
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return mask_url(secret) if "://" in secret else MASK_WHOLE
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [masked(item) for item in value]
    return value


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo and credential-like query values masked."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return MASK_WHOLE
    netloc = parts.netloc
    if has_password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK_IN_URL}@{host}"
    query = "&".join(_mask_parameter(p) for p in parts.query.split("&"))
    if netloc == parts.netloc and query == parts.query:
        return url  # as written: urlunsplit would turn sqlite:///x into sqlite:/x
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        shown += f"?{query}"
    if parts.fragment:
        shown += f"#{parts.fragment}"
    return shown


def _mask_parameter(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    if equals and value and any(hint in name.lower() for hint in _SECRET_QUERY_HINTS):
        return f"{name}={MASK_IN_URL}"
    return parameter


def _inject_webhook(args: argparse.Namespace, _settings: Settings) -> int:
    from proxy.adapters.logging_structlog import configure_logging
    from proxy.injector.webhook import run

    configure_logging(_settings.log_level, _settings.log_format)
    return run(tls_cert=args.tls_cert, tls_key=args.tls_key, port=args.port, host=args.host)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-sidecar",
        description="LLM egress sidecar: auth, rate limits, circuit breakers, tracing, metrics.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the proxy until SIGTERM/SIGINT").set_defaults(
        handler=_serve
    )
    commands.add_parser(
        "check-config", help="validate settings and print them, secrets masked"
    ).set_defaults(handler=_check_config)
    webhook = commands.add_parser(
        "inject-webhook", help="serve the Kubernetes sidecar-injection webhook over TLS"
    )
    webhook.add_argument("--tls-cert", required=True, metavar="FILE")
    webhook.add_argument("--tls-key", required=True, metavar="FILE")
    webhook.add_argument("--port", type=int, default=8443)
    webhook.add_argument("--host", default="0.0.0.0")
    webhook.set_defaults(handler=_inject_webhook)
    cli_admin.register(commands)
    cli_spend.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"llm-sidecar: {problem}\n")
        return EXIT_USAGE
    code: int = args.handler(args, settings)
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
