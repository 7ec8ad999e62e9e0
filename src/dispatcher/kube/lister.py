"""The list and watch calls, as a protocol: what the watch loop needs from the API client.

Kept apart from `kube.client` so that `core` (which must not import the client) and the watch
loop can both name it; `dispatcher.kube.client.KubeClient` implements it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol


class Lister(Protocol):
    def list_objects(
        self, kind: str, selector: str, fields: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """Objects of `kind` matching the label and field selectors, and the list's
        resourceVersion."""
        ...

    def list_each(
        self, kind: str, selector: str, fields: str, handle: Callable[[dict[str, Any]], None]
    ) -> str:
        """Hand every matching object to `handle`, page by page as the pages arrive (never all
        of them in memory at once), and return the list's resourceVersion."""
        ...

    def watch_objects(
        self,
        kind: str,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        fields: str = "",
    ) -> Iterator[dict[str, Any]]:
        """Watch events after `resource_version` until the server ends the stream."""
        ...
