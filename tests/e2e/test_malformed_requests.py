"""Seeded malformed requests over raw sockets against a running sidecar, seeds 1-9.

Each seed sends two kinds of case, each from its own random stream. The classic cases
come from ``generate`` in ``tests/support/malformed.py`` (a chat call with an
``Authorization`` and a body, then up to three mutations: method, target, version,
headers, framing, content type); case ``i`` of a seed is the same bytes it always was.
The body cases come from ``generate_bodies``: content-coded bodies (honest, lying,
truncated, bombs, stacked, unknown codings), chunk extensions and trailers, and bodies
sent in pieces with pauses or after a ``100 Continue``. Both go out through
``tests/support/raw_http.py`` to a fake upstream that records bodies still encoded.

The sidecar must answer every one without a 5xx, stay alive and ready, keep its log one
JSON object per line with no unhandled error, answer what it refuses in OpenAI's shape
with an access line, forward nothing malformed upstream and every relayed body byte for
byte with its ``Content-Encoding``, never echo or log a caller's key, and give each case
what it expects where that is known (413 for a bomb, 417 for an odd ``Expect``, ...).
``pytest -s`` prints each seed's outcome table; ``FUZZ_SEED=N`` runs seed N alone, with
``FUZZ_REQUESTS`` classic and ``FUZZ_BODY_REQUESTS`` body cases if set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GROQ_PROVIDER_KEY, OPENAI_PROVIDER_KEY, sidecar_env
from tests.support.compressed_bodies import decodable, decode
from tests.support.fake_upstream import FakeUpstream, Received
from tests.support.malformed import (
    MAX_BODY_BYTES,
    RELAYED,
    SMUGGLED,
    Case,
    Draft,
    Keys,
    generate,
    generate_bodies,
)
from tests.support.raw_http import Outcome, send, send_all
from tests.support.sidecar import SidecarProcess, http_status

_ONE_SEED = os.environ.get("FUZZ_SEED")
SEEDS = (int(_ONE_SEED),) if _ONE_SEED else tuple(range(1, 10))
"""Seed 1's classic draw reaches every bug the classic cases have found (seeds 1-24 checked)."""
SEED_1_CASES = (1000, 400)
"""Classic and body cases for seed 1 (and for a seed run alone with ``FUZZ_SEED``)."""
OTHER_SEEDS_CASES = (250, 200)
"""Seeds 2-9 send fewer, so that the nine runs take well under a minute."""
CONCURRENCY = 16
BODY_TIMEOUT_SECONDS = 1.0
"""The sidecar's LLM_SIDECAR_CLIENT_TIMEOUT_SECONDS: a stalled body gets 408 after it."""
CLIENT_TIMEOUT_SECONDS = BODY_TIMEOUT_SECONDS + 2.0
DECODABLE = decodable()
"""Codings the sidecar (same interpreter) can decode: gzip, deflate, zstd/br if installed."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REWRITABLE = frozenset({"model", "stream_options"})
"""What the sidecar may change in a JSON body on purpose (a model prefix, stream usage)."""


def _counts(seed: int) -> tuple[int, int]:
    classic, bodies = SEED_1_CASES if _ONE_SEED or seed == 1 else OTHER_SEEDS_CASES
    return (
        int(os.environ.get("FUZZ_REQUESTS", classic)),
        int(os.environ.get("FUZZ_BODY_REQUESTS", bodies)),
    )


# ------------------------------------------------------------------------------- the run


class _Records(logging.Handler):
    """What the fake upstream's aiohttp server logs: requests it could not parse or serve."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:  # a request it failed on, not chatter
            self.lines.append(f"{record.getMessage()}: {record.exc_info[1]!r}")


@dataclass
class FuzzRun:
    seed: int
    keys: Keys
    outcomes: list[Outcome]
    normal: Outcome
    received: list[Received]
    upstream_errors: list[str]
    alive: bool
    probes: tuple[int, int]
    exit_code: int = -1
    log: bytes = b""
    seconds: float = 0.0
    access: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The sidecar's access lines by correlation id."""

    def upstream_of(self, outcome: Outcome) -> list[Received]:
        """What the upstream got under this answer's correlation id (a few cases share one)."""
        correlation_id = outcome.headers.get("x-correlation-id")
        return [r for r in self.received if r.headers.get("x-correlation-id") == correlation_id]

    def summary(self) -> str:
        classic = Counter(o.label for o in self.outcomes if not o.case.prefix)
        bodies = Counter(o.label for o in self.outcomes if o.case.prefix)
        keyed = sum(
            o.case.labels[0] in ("auth:valid", "auth:scheme-variant") for o in self.outcomes
        )
        waited = [o for o in self.outcomes if o.case.waits_for_continue and o.relayed]
        by_coding: dict[str, Counter[str]] = defaultdict(Counter)
        for outcome in self.outcomes:
            if outcome.case.prefix:
                by_coding[outcome.case.labels[2].split(":")[1]][outcome.label] += 1
        return "\n".join(
            [
                f"malformed requests: seed {self.seed}, {sum(classic.values())} classic + "
                f"{sum(bodies.values())} body cases, {CONCURRENCY} at a time, "
                f"{self.seconds:.1f} s; {keyed} with the real key, {len(self.received)} "
                f"reached the upstream; {sum(o.continued for o in waited)} of {len(waited)} "
                "relayed clients that waited for 100 Continue got one",
                f"  {'status origin / outcome':<28}{'classic':>8}{'bodies':>8}{'all':>8}",
                *(
                    f"  {label:<28}{classic[label]:>8}{bodies[label]:>8}"
                    f"{classic[label] + bodies[label]:>8}"
                    for label in sorted(classic | bodies)
                ),
                "  body cases by coding: "
                + "; ".join(
                    f"{kind} " + ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
                    for kind, counts in sorted(by_coding.items())
                ),
            ]
        )


def _make_keys(process: SidecarProcess) -> Keys:
    """A roomy tenant (a 10**18 max_tokens estimate must not starve the rest) and its keys."""
    limits = ("--rpm", str(10**9), "--tpm", str(10**15))
    users = ("valid", "disabled", "revoked")
    made = {user: process.create_user("fuzz", user, *limits).encode() for user in users}
    process.cli("users", "disable", "disabled")
    process.cli("users", "rotate", "revoked")
    return Keys(**made)


def _normal_request(keys: Keys) -> Case:
    chat = b'{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}'
    draft = Draft(auth=[b"Authorization: Bearer " + keys.valid], headers=[b"Connection: close"])
    draft.body = chat
    return Case(-1, ("normal",), b"POST", draft.wire()[0], False, body=chat, expect=RELAYED)


def _cases(seed: int, keys: Keys) -> list[Case]:
    classic, bodies = _counts(seed)
    body_rng = random.Random(f"bodies-{seed}")
    return [
        *generate(random.Random(seed), keys, classic),
        *generate_bodies(body_rng, keys, bodies, DECODABLE),
    ]


async def _storm_then_normal(
    seed: int, process: SidecarProcess, keys: Keys, fake: FakeUpstream
) -> FuzzRun:
    started = time.monotonic()
    outcomes = await send_all(
        process.port,
        _cases(seed, keys),
        concurrency=CONCURRENCY,
        within_seconds=CLIENT_TIMEOUT_SECONDS,
    )
    seconds = time.monotonic() - started
    alive = process.process is not None and process.process.poll() is None
    probes = await asyncio.gather(
        *(
            asyncio.to_thread(http_status, process.admin_url + path)
            for path in ("/healthz", "/readyz")
        )
    )
    normal = await send(process.port, _normal_request(keys), within_seconds=CLIENT_TIMEOUT_SECONDS)
    received = list(fake.received)
    relayed_ids = {seen.headers.get("x-correlation-id", "") for seen in received}
    for outcome in [*outcomes, normal]:
        outcome.classify(relayed_ids)
    return FuzzRun(
        seed, keys, outcomes, normal, received, [], alive, (probes[0], probes[1]), seconds=seconds
    )


def _access_lines(log: bytes) -> dict[str, list[dict[str, Any]]]:
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "request":
            lines[str(event.get("correlation_id"))].append(event)
    return lines


@pytest.fixture(scope="module")
def encoded_upstream() -> Iterator[FakeUpstream]:
    """A fake upstream that records request bodies as they came, still content-encoded."""
    fake = FakeUpstream(keep_encoding=True, chunk_delay=0.0).start()  # streams end at once
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    """The fuzz tenant's user database, made once (seven CLI runs) and copied for each seed."""
    process = SidecarProcess(tmp_path_factory.mktemp("malformed-users"))
    process.workdir.mkdir(parents=True, exist_ok=True)
    return process.workdir, _make_keys(process)


@pytest.fixture(scope="module", params=SEEDS, ids=lambda seed: f"seed{seed}")
def run(
    request: pytest.FixtureRequest,
    encoded_upstream: FakeUpstream,
    users: tuple[Path, Keys],
    tmp_path_factory: pytest.TempPathFactory,
) -> FuzzRun:
    seed: int = request.param
    env = sidecar_env(
        encoded_upstream,
        LLM_SIDECAR_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        LLM_SIDECAR_CLIENT_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
    )
    process = SidecarProcess(tmp_path_factory.mktemp(f"malformed-{seed}"), env=env)
    shutil.copytree(users[0], process.workdir, dirs_exist_ok=True)
    keys = users[1]
    upstream_log, records = logging.getLogger("aiohttp.server"), _Records()
    encoded_upstream.reset()
    upstream_log.addHandler(records)
    try:
        process.start()
        fuzz = asyncio.run(_storm_then_normal(seed, process, keys, encoded_upstream))
    finally:
        upstream_log.removeHandler(records)
        exit_code = process.stop()
    assert process.log_path is not None
    fuzz.upstream_errors, fuzz.exit_code = records.lines, exit_code
    fuzz.log = process.log_path.read_bytes()
    fuzz.access = _access_lines(fuzz.log)
    print("\n" + fuzz.summary())
    return fuzz


def _examples(outcomes: list[Outcome], limit: int = 5) -> str:
    return "\n".join(str(outcome) for outcome in outcomes[:limit])


# ---------------------------------------------------------------------------- the checks


def test_sidecar_never_answers_5xx(run: FuzzRun) -> None:
    """No malformed request gets a 5xx (the fake upstream answers none to these bodies)."""
    failed = [o for o in run.outcomes if o.status >= 500]
    assert not failed, f"{len(failed)} answers were 5xx:\n{_examples(failed)}"


def test_every_request_gets_one_whole_answer(run: FuzzRun) -> None:
    """Every request gets one whole HTTP response in time; a stalled body gets the sidecar's 408."""
    waiting = [o for o in run.outcomes if o.kind == "awaiting-body"]
    assert not waiting, (
        f"{len(waiting)} incomplete bodies had no answer after {CLIENT_TIMEOUT_SECONDS} s though"
        f" the sidecar's body timeout is {BODY_TIMEOUT_SECONDS} s:\n{_examples(waiting)}"
    )
    broken = [o for o in run.outcomes if o.kind != "answered"]
    assert not broken, f"{len(broken)} requests got no whole answer:\n{_examples(broken)}"
    timed_out = [o for o in run.outcomes if o.status == 408 and o.origin != "sidecar"]
    assert not timed_out, _examples(timed_out)


def test_answers_are_what_each_case_expects(run: FuzzRun) -> None:
    """Where a case's answer is known (413 for a bomb, 417 for an odd Expect, ...), it is given."""
    wrong = [(o, why) for o in run.outcomes if (why := o.unexpected()) is not None]
    kinds = Counter(why.split(" expected ")[0].split(",")[0] for _, why in wrong)
    examples = "\n".join(f"{why}: {o}" for o, why in wrong[:8])
    assert not wrong, f"{len(wrong)} unexpected answers {dict(kinds)}:\n{examples}"


def test_sidecar_survives_and_still_serves(run: FuzzRun) -> None:
    """After the storm the process is alive and ready, serves a normal request and exits 0."""
    assert run.alive
    assert run.probes == (200, 200)
    assert run.normal.status == 200, str(run.normal)
    assert json.loads(run.normal.body)["choices"], str(run.normal)
    assert run.exit_code == 0, run.log[-2000:].decode(errors="replace")


def test_log_is_one_json_object_per_line(run: FuzzRun) -> None:
    """Every line the sidecar wrote (stdout and stderr) is one JSON object; none forged."""
    bad, events = [], []
    for number, line in enumerate(run.log.splitlines(), start=1):
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if b"\r" in line or b"\x00" in line or not isinstance(parsed, dict):
            bad.append(f"line {number}: {line[:200]!r}")
        else:
            events.append(parsed.get("event"))
    assert not bad, f"{len(bad)} log lines are not one JSON object:\n" + "\n".join(bad[:12])
    assert "fuzz-forged" not in events, "a request forged a log line"
    assert events.count("request") >= sum(o.origin != "aiohttp" for o in run.outcomes)


def test_no_unhandled_error_is_logged(run: FuzzRun) -> None:
    """No request, however its body is broken or late, makes the sidecar log an unhandled error."""
    unhandled = [line[:300] for line in run.log.splitlines() if b"unhandled error" in line]
    assert not unhandled, f"{len(unhandled)} unhandled errors:\n" + "\n".join(
        map(repr, unhandled[:5])
    )


def test_own_answers_are_openai_shaped_and_logged(run: FuzzRun) -> None:
    """The sidecar's own answers have an access line; those to body cases are OpenAI-shaped."""
    plain = [o for o in run.outcomes if o.case.prefix and o.origin == "aiohttp"]
    assert not plain, f"{len(plain)} body cases got a non-OpenAI answer:\n{_examples(plain)}"
    unlogged = [
        o
        for o in run.outcomes
        if o.origin == "sidecar" and o.headers.get("x-correlation-id") not in run.access
    ]
    assert not unlogged, f"{len(unlogged)} own answers have no access line:\n{_examples(unlogged)}"


def test_keys_never_echoed_or_logged(run: FuzzRun) -> None:
    """No answer (error bodies too) or log line holds a caller's key, part of it, or its digest."""
    needles: set[bytes] = set()
    for key in run.keys.all():
        needles.update(key[i : i + 16].encode() for i in range(len(key) - 15))
        needles.add(hashlib.sha256(key.encode()).hexdigest().encode())
    echoed = [o for o in run.outcomes if any(n in o.head + o.body for n in needles)]
    assert not echoed, f"{len(echoed)} answers echo a key:\n{_examples(echoed)}"
    logged = [line[:200] for line in run.log.splitlines() if any(n in line for n in needles)]
    assert not logged, f"{len(logged)} log lines hold a key:\n" + "\n".join(map(repr, logged[:5]))


def _upstream_problems(seen: Received, keys: tuple[str, ...]) -> list[str]:
    provider = (f"Bearer {OPENAI_PROVIDER_KEY}", f"Bearer {GROQ_PROVIDER_KEY}")
    checks = {
        "method is not a token": not _TOKEN.fullmatch(seen.method),
        "target is not origin-form": not seen.path.startswith("/"),
        "control or space in target": any(c <= " " or c == "\x7f" for c in seen.path),
        "header name is not a token": any(not _TOKEN.fullmatch(n) for n, _ in seen.raw_headers),
        "injected header": any(n.lower() == SMUGGLED for n, _ in seen.raw_headers),
        "CR/LF/NUL in a value": any(c in v for _, v in seen.raw_headers for c in "\r\n\x00"),
        "caller key": any(k in v for _, v in seen.raw_headers for k in keys),
        "not the provider key": seen.headers.get("authorization") not in provider,
    }
    where = f"{seen.method} {seen.path!r} {seen.raw_headers!r}"[:400]
    return [f"{problem}: {where}" for problem, found in checks.items() if found]


def test_nothing_malformed_reaches_the_upstream(run: FuzzRun) -> None:
    """Relayed requests reach the upstream once each, well-formed, uninjected, without a key."""
    problems = [f"the upstream could not parse or serve it: {line}" for line in run.upstream_errors]
    # A request smuggled inside another reaches the upstream with an id no answer carries.
    answered = Counter(o.headers.get("x-correlation-id") for o in [*run.outcomes, run.normal])
    ids = Counter(seen.headers.get("x-correlation-id") for seen in run.received)
    # (Two cases may send the same id, "second-one": then two answers carry it too.)
    problems += [f"no answer for upstream request {i}" for i, n in ids.items() if n > answered[i]]
    for seen in run.received:
        problems += _upstream_problems(seen, run.keys.all())
    assert not problems, f"{len(problems)} problems upstream:\n" + "\n".join(problems[:10])


def _coding(value: str | None) -> str | None:
    """A ``Content-Encoding`` as a list of codings (several lines are one list)."""
    codings = [part.strip() for part in (value or "").split(",")]
    return ", ".join(codings) if any(codings) else None


def _json_object(body: bytes, coding: str | None) -> dict[str, Any] | None:
    try:
        parsed = json.loads(decode(body, coding, MAX_BODY_BYTES) if coding else body)
    except ValueError:  # not JSON, or a coding that cannot be read here
        return None
    return parsed if isinstance(parsed, dict) else None


def _rewritten(case: Case, seen: Received, got: str | None) -> bool:
    """The sidecar changed only what it may (a model prefix, stream usage), as plain JSON."""
    assert case.body is not None
    sent = _json_object(case.body, _coding(case.content_encoding))
    relayed = _json_object(seen.body, None) if got is None else None
    if sent is None or relayed is None:
        return False
    kept = {k: v for k, v in sent.items() if k not in _REWRITABLE}
    return kept == {k: v for k, v in relayed.items() if k not in _REWRITABLE}


def _body_problem(outcome: Outcome, seen: Received) -> str | None:
    case = outcome.case
    if case.body is None:  # a framing that leaves the body undefined
        return None
    sent = _coding(case.content_encoding)
    got = _coding(", ".join(v for n, v in seen.raw_headers if n.lower() == "content-encoding"))
    if (seen.body == case.body and got == sent) or _rewritten(case, seen, got):
        return None
    return (
        f"sent {len(case.body)} bytes in {sent!r}, the upstream got {len(seen.body)} in {got!r}"
        f" ({'same' if seen.body == case.body else 'other'} bytes): {outcome}"
    )


def test_relayed_bodies_arrive_byte_identical(run: FuzzRun) -> None:
    """A body that reached the upstream is the one sent, byte for byte, Content-Encoding too."""
    problems, missing = [], []
    for outcome in [*run.outcomes, run.normal]:
        if not outcome.relayed:
            continue
        seen = run.upstream_of(outcome)
        found = [_body_problem(outcome, one) for one in seen]
        if not seen:
            missing.append(outcome)
        elif None not in found:
            problems.append(str(found[0]))
    assert not missing, f"{len(missing)} relayed answers with no upstream request"
    assert not problems, f"{len(problems)} bodies changed on the way:\n" + "\n".join(problems[:6])


def test_decoded_bodies_are_read(run: FuzzRun) -> None:
    """A relayed JSON body in a coding the sidecar decodes is read: its model is logged."""
    unread = []
    for outcome in run.outcomes:
        case = outcome.case
        typed = b"\r\nContent-Type: application/json" in case.wire.partition(b"\r\n\r\n")[0]
        if not (case.prefix and outcome.relayed and case.expect == RELAYED and typed):
            continue
        assert case.body is not None
        payload = _json_object(case.body, _coding(case.content_encoding)) or {}
        lines = run.access.get(outcome.headers.get("x-correlation-id", ""), [])
        if [line.get("model") for line in lines] != [payload.get("model")]:
            unread.append(f"logged {[line.get('model') for line in lines]}: {outcome}")
    assert not unread, f"{len(unread)} decodable bodies were not read:\n" + "\n".join(unread[:5])
