"""Reading a Pod as untrusted JSON: each reader checks the shape it needs or raises
:class:`Unreadable`, which the planner turns into "leave the pod alone, say why"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Unreadable(ValueError):
    """The pod has a shape this injector does not understand."""


def mapping(value: object, where: str) -> Mapping[str, Any]:
    """``value`` as a JSON object."""
    if not isinstance(value, dict):
        raise Unreadable(f"{where} is not an object")
    return value


def strings(value: object, where: str) -> Mapping[str, str]:
    """An optional map of strings (labels, annotations); absent means empty."""
    if value is None:
        return {}
    items = mapping(value, where)
    if not all(isinstance(v, str) for v in items.values()):
        raise Unreadable(f"{where} holds a value that is not a string")
    return items


def objects(value: object, where: str) -> list[Mapping[str, Any]]:
    """An optional list of JSON objects (containers, volumes, env); absent means empty."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Unreadable(f"{where} is not a list of objects")
    return value
