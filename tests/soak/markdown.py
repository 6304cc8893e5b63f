"""Small markdown helpers for the soak's report."""

from __future__ import annotations

from collections.abc import Mapping


def table(head: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A markdown table; ``align`` has one letter per column, ``r`` for right-aligned."""
    marks = [("---:" if a == "r" else "---") for a in align.ljust(len(head), "l")]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(marks) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def seconds(value: float | None, since: float | None = None) -> str:
    """Seconds since the load started, or since ``since``; ``-`` when it did not happen."""
    if value is None:
        return "-"
    return f"{value:.1f}" if since is None else f"{value - since:.2f}"


def number(value: float | None) -> str:
    """A float with two decimals and thousands separators, or ``-``."""
    return "-" if value is None else f"{value:,.2f}"


def bullets(items: Mapping[str, str]) -> list[str]:
    """One ``- key: value`` line per item."""
    return [f"- {key}: {value}" for key, value in items.items()]
