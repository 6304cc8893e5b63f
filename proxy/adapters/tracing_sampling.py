"""The ``OTEL_TRACES_SAMPLER`` decision, without the SDK's span machinery.

The built-in samplers the environment can name reduce to one question per request:
does this trace get recorded? With every one of them the client spans follow the server
span (a parent-based sampler follows its parent; ``traceidratio`` sees the same trace
id; ``always_*`` need no input), so one answer serves the whole request. The answers
are the SDK's own; ``tests/unit/test_tracing_sampling.py`` checks them against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

# Given the remote parent's sampled flag (``None`` when there is no valid parent) and
# the trace id: record this trace?
Sampler = Callable[[bool | None, int], bool]

_TRACE_ID_LIMIT = (1 << 64) - 1
_log = structlog.get_logger("llm_sidecar.tracing")


def _always_on(parent: bool | None, trace_id: int) -> bool:
    return True


def _always_off(parent: bool | None, trace_id: int) -> bool:
    return False


def _ratio(rate: float) -> Sampler:
    """``TraceIdRatioBased``: the low 64 bits of the trace id under the rate's bound."""
    bound = round(rate * (_TRACE_ID_LIMIT + 1))

    def sample(parent: bool | None, trace_id: int) -> bool:
        return trace_id & _TRACE_ID_LIMIT < bound

    return sample


def _parent_based(root: Sampler) -> Sampler:
    """``ParentBased``: a caller's sampled flag decides; ``root`` decides for new traces."""

    def sample(parent: bool | None, trace_id: int) -> bool:
        return root(parent, trace_id) if parent is None else parent

    return sample


PARENTBASED_ALWAYS_ON: Sampler = _parent_based(_always_on)


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``_ARG`` name (default ``parentbased_always_on``)."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    fixed = {
        "always_on": _always_on,
        "always_off": _always_off,
        "parentbased_always_on": PARENTBASED_ALWAYS_ON,
        "parentbased_always_off": _parent_based(_always_off),
    }
    if name in fixed:
        return fixed[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        try:
            rate = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            _log.warning("otel_sampler_arg_invalid", using=1.0)
            rate = 1.0
        ratio = _ratio(rate)
        return ratio if name == "traceidratio" else _parent_based(ratio)
    _log.warning("otel_sampler_unknown", sampler=name, using="parentbased_always_on")
    return PARENTBASED_ALWAYS_ON
