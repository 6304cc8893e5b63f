"""The run's tenants and users, made with the CLI (``tenants create``, ``users create``)."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tests.soak import ledger
from tests.support.sidecar import SidecarProcess

USERS = ("ann", "bob", "cat", "dan")
HUGE = ("--rpm", "1000000000", "--tpm", "2000000000")  # never what limits the soak (int4)
TENANTS: Mapping[str, tuple[str, ...]] = {
    "soak": HUGE,
    "probe-auth": HUGE,
    "probe-buckets": ("--rpm", "600", "--tpm", "2000000000"),
    ledger.TENANT: ("--rpm", "1000000000", "--tpm", str(ledger.TPM)),
}


@dataclass(frozen=True)
class Keys:
    """The API keys the run made with the CLI, by use."""

    traffic: list[str]
    auth_probes: list[str]  # never used before their probe: [0] baseline, then one per outage
    bucket_probe: str
    ledger: list[str]


def create_keys(sidecar: SidecarProcess, postgres_outages: int) -> Keys:
    for tenant, flags in TENANTS.items():
        sidecar.cli("tenants", "create", tenant, *flags)
    wanted = [(u, "soak") for u in USERS] + [(f"ledger-{u}", ledger.TENANT) for u in USERS]
    wanted += [(f"probe-auth-{n}", "probe-auth") for n in range(1 + postgres_outages)]
    wanted += [("probe-buckets", "probe-buckets")]

    def create(user: str, tenant: str) -> str:
        out = sidecar.cli("users", "create", user, "--tenant", tenant).stdout
        return out.strip().splitlines()[-1]

    with ThreadPoolExecutor(4) as pool:
        made = dict(zip(wanted, pool.map(lambda w: create(*w), wanted), strict=True))
    return Keys(
        traffic=[made[(u, "soak")] for u in USERS],
        auth_probes=[made[(f"probe-auth-{n}", "probe-auth")] for n in range(1 + postgres_outages)],
        bucket_probe=made[("probe-buckets", "probe-buckets")],
        ledger=[made[(f"ledger-{u}", ledger.TENANT)] for u in USERS],
    )
