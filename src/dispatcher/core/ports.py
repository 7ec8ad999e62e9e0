"""The seams between the core logic and the outside world.

`core` talks to Kubernetes and to the broker only through these protocols; the real adapters
live in `dispatcher.kube.client` and `dispatcher.amqp.publisher`, and unit tests pass fakes.
Kubernetes objects cross the seam as plain JSON dicts (camelCase, as the API server sends them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from dispatcher.kube.lister import Lister
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute

KubeObject = dict[str, Any]


class KubeGateway(Lister, Protocol):
    """The Kubernetes calls the dispatcher makes, all within its own namespace."""

    def create_job(self, manifest: Mapping[str, Any]) -> KubeObject: ...

    def get_job(self, name: str) -> KubeObject | None: ...

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> KubeObject: ...

    def annotate_job(
        self, name: str, annotations: Mapping[str, str | None], *, resource_version: str
    ) -> KubeObject:
        """Set (a None value: remove) annotations of the Job, only while it is still at
        `resource_version` (else ConflictError): one conditional merge patch."""
        ...

    def release_job(
        self,
        name: str,
        finalizer: str,
        annotations: Mapping[str, str],
        *,
        resource_version: str | None = None,
        ttl_seconds: int | None = None,
    ) -> KubeObject | None: ...

    def delete_job(self, name: str) -> None: ...

    def list_pods(self, selector: str) -> list[KubeObject]: ...

    def create_tombstone(self, manifest: Mapping[str, Any]) -> KubeObject | None:
        """None when a tombstone of that name exists already."""
        ...

    def get_tombstone(self, name: str) -> KubeObject | None: ...

    def list_tombstones(self, selector: str) -> list[KubeObject]: ...

    def delete_tombstone(self, name: str, *, uid: str | None = None) -> None:
        """Delete it (only while its uid is `uid`, when given); gone already is no error."""
        ...

    def read_log(self, pod: str, container: str, cap: int) -> str: ...


class ResponsePublisher(Protocol):
    """Publishes one response durably (returns once the broker confirmed it)."""

    def publish(self, response: Response, route: ReplyRoute, message_id: str) -> None: ...


class EventPublisher(Protocol):
    """Publishes one progress event, best effort (it may raise; callers log and go on)."""

    def publish_event(
        self, event: ProgressEvent, correlation_id: str | None, message_id: str
    ) -> None: ...
