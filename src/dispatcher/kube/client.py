"""The only module that talks HTTP to the Kubernetes API.

lightkube supplies configuration and authentication (kubeconfig files, in-cluster service
account tokens that rotate, exec plugins) and a configured HTTP client; on top of it this adapter
makes plain JSON calls, so objects are dicts end to end, pod logs arrive as exact bytes, and watch
streams carry bookmarks and a client-side read timeout. Every HTTP or transport failure leaves
this module as one of the `dispatcher.errors.KubeError` classes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

import httpx2
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import DEFAULT_KUBECONFIG, KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

from dispatcher.config import Settings
from dispatcher.errors import (
    ConflictError,
    ForbiddenError,
    InvalidSpecError,
    KubeError,
    NotFoundError,
    PermanentKubeError,
    TransientKubeError,
)
from dispatcher.kube.conventions import annotation_patch
from dispatcher.messages.output import TailBuffer

log = logging.getLogger(__name__)

KubeObject = dict[str, Any]
_PATHS = {
    "jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
    "pods": "/api/v1/namespaces/{ns}/pods",
    "events": "/api/v1/namespaces/{ns}/events",
    "persistentvolumeclaims": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "workloads": "/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads",
    "localqueues": "/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/localqueues",
}
_NAMES = {
    "configmaps": "ConfigMap",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "workloads": "Workload",
    "localqueues": "LocalQueue",
}
LIST_PAGE_SIZE = 500
# 401 too: a service account token the kubelet has just rotated (lightkube re-reads the token
# file once by itself; a 401 that persists is retried with backoff rather than answered).
_TRANSIENT_STATUSES = {401, 429, 500, 502, 503, 504}
_PERMANENT_BY_STATUS: dict[int, type[KubeError]] = {
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidSpecError,
}


def load_config(settings: Settings) -> KubeConfig:
    """In-cluster service account, or the kubeconfig file (KUBECONFIG or ~/.kube/config) —
    never the other one by surprise."""
    if settings.k8s_in_cluster:
        return KubeConfig.from_service_account()
    return KubeConfig.from_file(settings.kubeconfig or DEFAULT_KUBECONFIG)


def error_from_response(response: httpx2.Response, action: str) -> KubeError:
    """Map an HTTP error answer to our error tree, with the API server's own message."""
    try:
        message = str(response.json().get("message") or response.reason_phrase)
    except ValueError:
        message = response.reason_phrase or f"HTTP {response.status_code}"
    text = f"{action}: {message} (HTTP {response.status_code})"
    status = response.status_code
    if status in _TRANSIENT_STATUSES:
        return TransientKubeError(text, status)
    return _PERMANENT_BY_STATUS.get(status, PermanentKubeError)(text, status)


RequestObserver = Callable[[str, str, float], None]
"""Told of every request made, with its verb (get, list, watch, create, patch, delete, log), its
resource (jobs, pods, ...) and the seconds until its answer (its head, for a log or a watch,
which stream), failed ones included: the dispatcher's load on the API server and how fast the
API server answers it."""


def _classify(method: str, path: str, params: Mapping[str, str] | None) -> tuple[str, str]:
    """The verb and resource of a request to one of `KubeClient._path`'s paths."""
    parts = path.split("/")
    if "namespaces" not in parts:
        return "get", "discovery"  # an API group's list of resources (`serves`)
    resource = parts[parts.index("namespaces") + 2]
    named = len(parts) > parts.index(resource) + 1 if resource in parts else False
    if path.endswith("/log"):
        return "log", resource
    if method == "GET":
        return ("get" if named else "watch" if (params or {}).get("watch") else "list"), resource
    return {"POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method, method), resource


class KubeClient:
    """JSON calls against one namespace. Thread-safe: the HTTP client pools connections."""

    def __init__(
        self,
        http: httpx2.Client,
        namespace: str,
        *,
        field_manager: str = "dispatcher",
        on_request: RequestObserver | None = None,
    ):
        self._http = http
        self.namespace = namespace
        self._field_manager = field_manager
        self.on_request: RequestObserver = on_request or (lambda verb, resource, seconds: None)
        # told of every request the API server turned away with 429 Too Many Requests
        self.on_throttled: Callable[[], None] = lambda: None

    @classmethod
    def from_settings(cls, settings: Settings) -> KubeClient:
        """Raises PermanentKubeError, with one line saying why, when no configuration loads."""
        where = "in-cluster service account" if settings.k8s_in_cluster else "kubeconfig"
        try:
            single = load_config(settings).get()
        except (LightkubeConfigError, OSError, KeyError, ValueError) as exc:
            raise PermanentKubeError(f"cannot load the Kubernetes {where}: {exc}") from exc
        if single is None:
            raise PermanentKubeError(f"no Kubernetes context found in the {where}")
        params = client_adapter.ConnectionParams(timeout=httpx2.Timeout(15.0), trust_env=False)
        return cls(client_adapter.Client(single, params), settings.job_namespace)

    def close(self) -> None:
        self._http.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        path = _PATHS[kind].format(ns=quote(self.namespace, safe=""))
        if name is not None:
            path += "/" + quote(name, safe="")
        if sub is not None:
            path += "/" + sub
        return path

    @contextmanager
    def _observed(self, method: str, path: str, params: Mapping[str, str] | None) -> Iterator[None]:
        """Times the request made inside and tells `on_request`, whether it succeeded or not."""
        verb, resource = _classify(method, path, params)
        started = time.monotonic()
        try:
            yield
        finally:
            self.on_request(verb, resource, time.monotonic() - started)

    def _call(self, method: str, path: str, action: str, **kwargs: Any) -> httpx2.Response:
        try:
            with self._observed(method, path, kwargs.get("params")):
                response = self._http.request(method, path, **kwargs)
        except httpx2.RequestError as exc:  # transport failures and undecodable bodies
            raise TransientKubeError(f"{action}: {type(exc).__name__}: {exc}") from exc
        if response.is_error:
            raise self._failure(response, action)
        return response

    def _failure(self, response: httpx2.Response, action: str) -> KubeError:
        if response.status_code == 429:
            self.on_throttled()
        return error_from_response(response, action)

    def _json(self, method: str, path: str, action: str, **kwargs: Any) -> KubeObject:
        data: KubeObject = self._call(method, path, action, **kwargs).json()
        return data

    # -- Jobs ---------------------------------------------------------------------------------

    def create_job(self, manifest: Mapping[str, Any]) -> KubeObject:
        name = manifest["metadata"]["name"]
        params = {"fieldManager": self._field_manager}
        return self._json(
            "POST", self._path("jobs"), f"create Job {name}", json=dict(manifest), params=params
        )

    def get_job(self, name: str) -> KubeObject | None:
        try:
            return self._json("GET", self._path("jobs", name), f"read Job {name}")
        except NotFoundError:
            return None

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> KubeObject:
        """JSON merge patch; a metadata.resourceVersion in the patch makes it conditional."""
        headers = {"Content-Type": "application/merge-patch+json"}
        body = json.dumps(patch).encode()
        params = {"fieldManager": self._field_manager}
        return self._json(
            "PATCH",
            self._path("jobs", name),
            f"patch Job {name}",
            content=body,
            headers=headers,
            params=params,
        )

    def annotate_job(
        self, name: str, annotations: Mapping[str, str | None], *, resource_version: str
    ) -> KubeObject:
        """Set (None: remove) `annotations`, only while the Job is at `resource_version`."""
        return self.patch_job(name, annotation_patch(annotations, resource_version))

    def release_job(
        self,
        name: str,
        finalizer: str,
        annotations: Mapping[str, str],
        *,
        resource_version: str | None = None,
        ttl_seconds: int | None = None,
    ) -> KubeObject | None:
        """Set `annotations` and drop `finalizer` from the Job in one patch (a strategic merge
        patch: the Job's other finalizers stay), only if it is still at `resource_version` when
        one is given (else ConflictError), and set its ttlSecondsAfterFinished when
        `ttl_seconds` is given. A Job being deleted goes once its last finalizer does; None
        when the Job was already gone."""
        meta: dict[str, Any] = {
            "annotations": dict(annotations),
            "$deleteFromPrimitiveList/finalizers": [finalizer],
        }
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        patch: dict[str, Any] = {"metadata": meta}
        if ttl_seconds is not None:
            patch["spec"] = {"ttlSecondsAfterFinished": ttl_seconds}
        try:
            return self._json(
                "PATCH",
                self._path("jobs", name),
                f"release Job {name}",
                content=json.dumps(patch).encode(),
                headers={"Content-Type": "application/strategic-merge-patch+json"},
                params={"fieldManager": self._field_manager},
            )
        except NotFoundError:
            return None

    def delete_job(self, name: str) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", self._path("jobs", name), f"delete Job {name}", json=body)
        except NotFoundError:
            log.debug("Job %s was already deleted", name)

    # -- Tombstones of tasks cancelled before they reached the cluster ------------------------

    def create_tombstone(self, manifest: Mapping[str, Any]) -> KubeObject | None:
        """Create the ConfigMap `manifest`; None when one of that name exists already."""
        name = manifest["metadata"]["name"]
        params = {"fieldManager": self._field_manager}
        try:
            return self._json(
                "POST",
                self._path("configmaps"),
                f"create ConfigMap {name}",
                json=dict(manifest),
                params=params,
            )
        except ConflictError:
            return None

    def get_tombstone(self, name: str) -> KubeObject | None:
        return self.get_object("configmaps", name)

    def list_tombstones(self, selector: str) -> list[KubeObject]:
        data = self._json(
            "GET", self._path("configmaps"), "list ConfigMaps", params={"labelSelector": selector}
        )
        items: list[KubeObject] = data.get("items") or []
        return items

    def delete_tombstone(self, name: str, *, uid: str | None = None) -> None:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        with suppress(NotFoundError, ConflictError):  # gone, or made anew since it was read
            self._call(
                "DELETE", self._path("configmaps", name), f"delete ConfigMap {name}", json=body
            )

    def get_claim(self, name: str) -> KubeObject | None:
        """The PersistentVolumeClaim `name` of the namespace, or None when there is none."""
        return self.get_object("persistentvolumeclaims", name)

    def get_object(self, kind: str, name: str) -> KubeObject | None:
        """The object `name` of `kind` in the namespace, or None when there is none."""
        try:
            return self._json("GET", self._path(kind, name), f"read {_NAMES[kind]} {name}")
        except NotFoundError:
            return None

    def serves(self, kind: str) -> bool:
        """True when the API server serves `kind` (its API group and version are installed)."""
        group_version = _PATHS[kind].split("/namespaces/")[0]
        try:
            data = self._json("GET", group_version, f"discover {group_version}")
        except NotFoundError:
            return False
        resource = _PATHS[kind].rsplit("/", 1)[-1]
        return any(item.get("name") == resource for item in data.get("resources") or ())

    # -- Pods and logs ------------------------------------------------------------------------

    def list_pods(self, selector: str) -> list[KubeObject]:
        data = self._json(
            "GET", self._path("pods"), "list Pods", params={"labelSelector": selector}
        )
        items: list[KubeObject] = data.get("items") or []
        return items

    def read_log(self, pod: str, container: str, cap: int) -> str:
        """The container's whole log as exact bytes, keeping at most `cap` bytes of the tail."""
        buffer = TailBuffer(cap)
        path = self._path("pods", pod, "log")
        params = {"container": container}
        with self._stream(path, params, f"read the log of Pod {pod}", read_timeout=60.0) as body:
            for chunk in body.iter_bytes(65536):
                buffer.feed(chunk)
        return buffer.text()

    @contextmanager
    def _stream(
        self, path: str, params: Mapping[str, str], action: str, *, read_timeout: float
    ) -> Iterator[httpx2.Response]:
        """A streamed GET whose HTTP and transport errors become KubeErrors; always closed."""
        request = self._http.build_request(
            "GET", path, params=params, timeout=httpx2.Timeout(15.0, read=read_timeout)
        )
        try:
            with self._observed("GET", path, params):
                response = self._http.send(request, stream=True)
            try:
                if response.is_error:
                    response.read()
                    raise self._failure(response, action)
                yield response
            finally:
                response.close()
        except httpx2.RequestError as exc:  # transport failures and undecodable bodies
            raise TransientKubeError(f"{action}: {type(exc).__name__}: {exc}") from exc

    # -- list + watch -------------------------------------------------------------------------

    def list_objects(
        self, kind: str, selector: str, fields: str = "", *, page_size: int = LIST_PAGE_SIZE
    ) -> tuple[list[KubeObject], str]:
        """Every matching object, read in pages of `page_size` (one consistent snapshot), and
        the snapshot's resourceVersion to watch from."""
        items: list[KubeObject] = []
        version = self.list_each(kind, selector, fields, items.append, page_size=page_size)
        return items, version

    def list_each(
        self,
        kind: str,
        selector: str,
        fields: str,
        handle: Callable[[KubeObject], None],
        *,
        page_size: int = LIST_PAGE_SIZE,
    ) -> str:
        """Hand every matching object to `handle` as its page arrives (pages of `page_size`,
        one consistent snapshot); the snapshot's resourceVersion."""
        params = {"labelSelector": selector, "fieldSelector": fields, "limit": str(page_size)}
        while True:
            data = self._json("GET", self._path(kind), f"list {kind}", params=params)
            for item in data.get("items") or ():
                handle(item)
            token = data["metadata"].get("continue")
            if not token:
                return str(data["metadata"]["resourceVersion"])
            params = {**params, "continue": token}
            del data  # the next page need not wait for this one's memory

    def watch_objects(
        self,
        kind: str,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        fields: str = "",
    ) -> Iterator[KubeObject]:
        """Watch events (dicts with `type` and `object`) until the server ends the stream.

        The server closes the stream after `timeout_seconds`; the client gives up reading
        30 s later, so a connection that silently died cannot hang the watch forever.
        """
        params = {
            "watch": "true",
            "labelSelector": selector,
            "fieldSelector": fields,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        timeout = timeout_seconds + 30.0
        with self._stream(self._path(kind), params, f"watch {kind}", read_timeout=timeout) as body:
            for line in body.iter_lines():
                if line.strip():
                    yield _event(line, kind)


def _event(line: str, kind: str) -> KubeObject:
    try:
        event: KubeObject = json.loads(line)
    except ValueError as exc:  # a cut or garbled stream: watch again
        raise TransientKubeError(f"watch {kind}: undecodable event: {exc}") from exc
    return event
