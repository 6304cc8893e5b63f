"""The distribution owns its import names; nothing else installed may claim them."""

from __future__ import annotations

from importlib.metadata import distribution, packages_distributions

from proxy.entrypoints import cli


def test_no_other_distribution_claims_proxy_or_auth() -> None:
    """`proxy` and `auth` are also PyPI names (proxy.py, auth): only llm-sidecar may own them."""
    owners = packages_distributions()
    for name in ("proxy", "auth"):
        assert set(owners.get(name, [])) == {"llm-sidecar"}, (name, owners.get(name))


def test_console_script_is_llm_sidecar_only() -> None:
    """The distribution installs one script, `llm-sidecar`, and none called `proxy`."""
    scripts = {
        script.name: script.value
        for script in distribution("llm-sidecar").entry_points
        if script.group == "console_scripts"
    }
    assert scripts == {"llm-sidecar": "proxy.entrypoints.cli:run"}
    assert cli.build_parser().prog == "llm-sidecar"
