"""Small readers shared by the modules that judge Kubernetes objects (plain JSON dicts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def condition(
    obj: Mapping[str, Any], kind: str, *, status: str = "True"
) -> Mapping[str, Any] | None:
    """The object's condition of type ``kind`` with the given status, if any."""
    conditions: Sequence[Mapping[str, Any]] = (obj.get("status") or {}).get("conditions") or ()
    for item in conditions:
        if item.get("type") == kind and item.get("status") == status:
            return item
    return None


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines included) as one space."""
    return " ".join(text.split())
