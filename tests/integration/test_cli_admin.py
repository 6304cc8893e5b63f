"""The tenants/users CLI against a real SQLite file (and once through ``python -m proxy``).

Tests are synchronous on purpose: each handler runs its own ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from auth.core import keys
from auth.core.errors import InvalidCredentials
from auth.core.service import AuthService
from auth.repository import open_repository
from proxy.entrypoints import cli_admin

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """Parses argv with only the admin groups registered and runs the chosen handler."""

    def __init__(self, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        parser = argparse.ArgumentParser(prog="llm-sidecar")
        cli_admin.register(parser.add_subparsers(dest="command", required=True))
        self.parser = parser
        self.capsys = capsys
        self.settings: Any = SimpleNamespace(
            database_url=database_url,
            default_rpm=600,
            default_tpm=200_000,
            upstreams={"openai": object(), "groq": object()},
        )

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        args = self.parser.parse_args(argv)
        code = args.handler(args, self.settings)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "users.db"


@pytest.fixture
def cli(db_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(f"sqlite:///{db_path}", capsys)


def _who(db_path: Path, key: str) -> str:
    return asyncio.run(_authenticate(db_path, key))


async def _authenticate(db_path: Path, key: str) -> str:
    repo = open_repository(f"sqlite:///{db_path}")
    try:
        principal = await AuthService(repo, cache_ttl_seconds=0).authenticate(f"Bearer {key}")
        return f"{principal.tenant}/{principal.user}"
    except InvalidCredentials as exc:
        return exc.reason
    finally:
        await repo.close()


def test_create_user_prints_a_working_key_on_the_last_line(cli: Cli, db_path: Path) -> None:
    """users create prints the key alone on the last stdout line, and that key authenticates."""
    assert cli("tenants", "create", "acme", "--rpm", "60", "--upstreams", "openai")[0] == 0
    code, out, err = cli("users", "create", "alice", "--tenant", "acme")
    assert (code, err) == (0, "")
    key = out.splitlines()[-1]
    assert keys.is_well_formed(key)
    assert _who(db_path, key) == "acme/alice"


def test_json_output_of_create_and_rotate(cli: Cli, db_path: Path) -> None:
    """--json prints one object with api_key, user and tenant; rotate revokes the old key."""
    cli("tenants", "create", "acme")
    code, out, _ = cli("users", "create", "alice", "--tenant", "acme", "--json")
    created = json.loads(out)
    assert code == 0
    assert created["user"] == "alice"
    assert created["tenant"] == "acme"
    code, out, _ = cli("users", "rotate", "alice", "--json")
    rotated = json.loads(out)
    assert code == 0
    assert rotated["tenant"] == "acme"
    assert rotated["api_key"] != created["api_key"]
    assert _who(db_path, created["api_key"]) == "unknown"
    assert _who(db_path, rotated["api_key"]) == "acme/alice"


def test_rotate_prints_the_new_key_on_the_last_line(cli: Cli, db_path: Path) -> None:
    """users rotate (text mode) ends with the new key alone on the last line."""
    cli("tenants", "create", "acme")
    cli("users", "create", "alice", "--tenant", "acme")
    code, out, _ = cli("users", "rotate", "alice")
    assert code == 0
    assert _who(db_path, out.splitlines()[-1]) == "acme/alice"


def test_disable_and_enable(cli: Cli, db_path: Path) -> None:
    """users disable makes the key fail with 'disabled'; users enable restores it."""
    cli("tenants", "create", "acme")
    key = cli("users", "create", "alice", "--tenant", "acme")[1].splitlines()[-1]
    assert cli("users", "disable", "alice")[0] == 0
    assert _who(db_path, key) == "disabled"
    assert cli("users", "enable", "alice")[0] == 0
    assert _who(db_path, key) == "acme/alice"


def test_lists_are_readable_and_never_show_keys(cli: Cli, db_path: Path) -> None:
    """tenants/users list print tables (or JSON) without any key or digest."""
    cli("tenants", "create", "acme", "--tpm", "5000", "--burst", "10", "--upstreams", "openai,groq")
    cli("tenants", "create", "beta")
    key = cli("users", "create", "alice", "--tenant", "acme")[1].splitlines()[-1]
    cli("users", "create", "bob", "--tenant", "beta")
    cli("users", "disable", "bob")
    code, tenants, _ = cli("tenants", "list")
    assert code == 0
    lines = tenants.splitlines()
    assert lines[0].split() == ["NAME", "RPM", "TPM", "BURST", "UPSTREAMS", "BUDGET_USD"]
    assert lines[1].split() == ["acme", "600", "(default)", "5000", "10", "groq,openai", "-"]
    assert lines[2].split() == ["beta", "600", "(default)", "200000", "(default)", "-", "*", "-"]
    code, users, _ = cli("users", "list")
    assert code == 0
    assert [line.split()[:3] for line in users.splitlines()] == [
        ["NAME", "TENANT", "STATUS"],
        ["alice", "acme", "enabled"],
        ["bob", "beta", "disabled"],
    ]
    code, only_beta, _ = cli("users", "list", "--tenant", "beta", "--json")
    assert [u["name"] for u in json.loads(only_beta)] == ["bob"]
    code, tenants_json, _ = cli("tenants", "list", "--json")
    assert json.loads(tenants_json)[0] == {
        "name": "acme",
        "rpm": None,
        "tpm": 5000,
        "burst": 10,
        "allowed_upstreams": ["groq", "openai"],
        "budget_usd": None,
        "budget_window": "month",
    }
    everything = tenants + users + only_beta + tenants_json
    assert key not in everything
    assert keys.digest(key) not in everything
    assert "llmsc-" not in everything


def test_update_changes_only_the_given_fields(cli: Cli) -> None:
    """tenants update keeps unspecified fields; 'default' and '*' reset a limit and upstreams."""
    cli("tenants", "create", "acme", "--rpm", "60", "--tpm", "500", "--upstreams", "groq")
    assert cli("tenants", "update", "acme", "--tpm", "900")[0] == 0
    listed = json.loads(cli("tenants", "list", "--json")[1])[0]
    assert (listed["rpm"], listed["tpm"], listed["allowed_upstreams"]) == (60, 900, ["groq"])
    assert cli("tenants", "update", "acme", "--rpm", "default", "--upstreams", "*")[0] == 0
    listed = json.loads(cli("tenants", "list", "--json")[1])[0]
    assert (listed["rpm"], listed["tpm"], listed["allowed_upstreams"]) == (None, 900, None)


@pytest.mark.parametrize(
    ("setup", "argv", "needle"),
    [
        ([["tenants", "create", "acme"]], ["tenants", "create", "acme"], "already exists"),
        ([], ["users", "create", "alice", "--tenant", "nope"], "no tenant named 'nope'"),
        ([], ["tenants", "update", "nope", "--rpm", "1"], "no tenant named 'nope'"),
        ([], ["tenants", "delete", "nope"], "no tenant named 'nope'"),
        ([], ["users", "disable", "nope"], "no user named 'nope'"),
        ([], ["users", "rotate", "nope"], "no user named 'nope'"),
        ([], ["users", "list", "--tenant", "nope"], "no tenant named 'nope'"),
        ([], ["tenants", "create", "acme", "--upstreams", "azure"], "unknown upstream(s) azure"),
        ([], ["tenants", "create", "bad name!"], "invalid tenant name"),
        (
            [["tenants", "create", "acme"], ["users", "create", "alice", "--tenant", "acme"]],
            ["users", "create", "alice", "--tenant", "acme"],
            "user 'alice' already exists",
        ),
        (
            [["tenants", "create", "acme"], ["users", "create", "alice", "--tenant", "acme"]],
            ["tenants", "delete", "acme"],
            "--cascade",
        ),
    ],
)
def test_bad_input_is_one_stderr_line_and_exit_2(
    cli: Cli, setup: list[list[str]], argv: list[str], needle: str
) -> None:
    """Duplicates, unknown names and invalid values: exit 2 with one clear line on stderr."""
    for step in setup:
        assert cli(*step)[0] == 0
    code, out, err = cli(*argv)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert needle in err


def test_bad_limit_is_rejected_by_the_parser(cli: Cli) -> None:
    """A non-positive or non-numeric limit is a usage error (exit 2) before any I/O."""
    for value in ("0", "-5", "lots"):
        with pytest.raises(SystemExit) as caught:
            cli("tenants", "create", "acme", "--rpm", value)
        assert caught.value.code == 2


def test_cascade_delete_removes_users(cli: Cli) -> None:
    """tenants delete --cascade deletes the tenant and its users."""
    cli("tenants", "create", "acme")
    cli("users", "create", "alice", "--tenant", "acme")
    assert cli("tenants", "delete", "acme", "--cascade")[0] == 0
    assert json.loads(cli("users", "list", "--json")[1]) == []


def test_unreachable_repository_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When the database cannot be opened, commands exit 1 with one stderr line."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    cli = Cli(f"sqlite:///{blocker}/users.db", capsys)
    code, out, err = cli("tenants", "list")
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot reach the user repository")


def test_unsupported_database_url_exits_2_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database URL of another scheme is a config error (exit 2) that hides the password."""
    cli = Cli("mysql://root:s3cret@db/users", capsys)
    code, _, err = cli("tenants", "list")
    assert code == 2
    assert "s3cret" not in err


def test_python_dash_m_proxy_runs_the_admin_commands(tmp_path: Path) -> None:
    """The real console entry point reaches these commands and prints the key last."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLM_SIDECAR_")},
        "LLM_SIDECAR_DATABASE_URL": f"sqlite:///{tmp_path}/users.db",
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert run("tenants", "create", "acme").returncode == 0
    created = run("users", "create", "alice", "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    assert keys.is_well_formed(created.stdout.splitlines()[-1])
    duplicate = run("users", "create", "alice", "--tenant", "acme")
    assert duplicate.returncode == 2
    assert "already exists" in duplicate.stderr


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty repository of each kind (a throwaway PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/users.db"
        return
    from tests.support.postgres import fresh_database

    loop = asyncio.new_event_loop()
    database = fresh_database("llmsc_cli")
    try:
        yield loop.run_until_complete(database.__aenter__())
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.mark.parametrize("value", ["1e19", "9223372036854775808", "0", "1.5", "inf", "nan"])
@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--burst"])
def test_limits_a_repository_cannot_hold_are_usage_errors(
    any_database: str, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """Past 64 bits (or not a whole number): exit 2 with one clear line, for create and
    update alike, before any I/O (a huge value once ended in a PostgreSQL DataError)."""
    cli = Cli(any_database, capsys)
    assert cli("tenants", "create", "acme")[0] == 0
    for command in ("create", "update"):
        with pytest.raises(SystemExit) as caught:
            cli("tenants", command, "acme", flag, value)
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}:" in err
        assert "Traceback" not in err


def test_the_largest_limits_round_trip(
    any_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bound is what both repositories store (64 bits); exponent forms of whole numbers."""
    cli = Cli(any_database, capsys)
    assert cli("tenants", "create", "acme", "--tpm", "1e12", "--rpm", "1e6")[0] == 0
    assert cli("tenants", "update", "acme", "--burst", str(2**63 - 1))[0] == 0
    listed = json.loads(cli("tenants", "list", "--json")[1])[0]
    assert (listed["rpm"], listed["tpm"], listed["burst"]) == (10**6, 10**12, 2**63 - 1)


@pytest.mark.postgres
def test_python_dash_m_proxy_takes_1e12_and_rejects_past_64_bits(any_database: str) -> None:
    """The command of the report, through the real entry point: ``--tpm 1e12`` is stored
    (it ended in a DataError on an INTEGER column); past 64 bits: exit 2, no DB error."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLM_SIDECAR_")},
        "LLM_SIDECAR_DATABASE_URL": any_database,
    }

    def create(name: str, tpm: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "tenants", "create", name, "--tpm", tpm],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert create("acme", "1e12").returncode == 0
    done = create("bigger", "1e19")
    assert done.returncode == 2
    assert f"--tpm: must be at most {2**63 - 1}" in done.stderr
    assert "DataError" not in done.stderr
