"""``llm-sidecar``: the one console script (also ``python -m proxy``).

Errors go to stderr as one human line each; exit 2 for bad input or config, 1 for a
runtime failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from proxy.entrypoints import cli_admin
from proxy.settings import Settings, SettingsError, load_settings

EXIT_USAGE = 2


def _serve(_args: argparse.Namespace, settings: Settings) -> int:
    from proxy.adapters.logging_structlog import configure_logging
    from proxy.entrypoints.serve import serve

    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)


def _check_config(_args: argparse.Namespace, settings: Settings) -> int:
    # SecretStr renders as "**********" in JSON mode: keys never reach the terminal.
    effective = settings.model_dump(mode="json")
    sys.stdout.write(orjson.dumps(effective, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


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
