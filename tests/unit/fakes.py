"""Fakes at the dispatcher's own ports, and canned Kubernetes objects for the unit tests.

`FakeKube` plays the API server behind `KubeGateway` for one namespace: Jobs live in a dict, every
write bumps the resourceVersion, a merge patch that carries ``metadata.resourceVersion`` is
conditional (409 Conflict when stale, as on a real server), and a deleted Job's last state is
kept, as a watch DELETED event would carry it. Scenarios inject another client's action or a
failure just before a call. `FakePublisher` records every response as the broker received it.
Objects are plain camelCase dicts shaped like those of a Kubernetes 1.35 to 1.37 API server.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher.config import Settings
from dispatcher.errors import ConflictError, KubeError, NotFoundError, PermanentKubeError
from dispatcher.kube.conventions import (
    CONTAINER_NAME,
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    annotation_patch,
)
from dispatcher.kube.jobspec import build_job
from dispatcher.kube.outcome import job_finished
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task

if TYPE_CHECKING:
    from dispatcher.core.ports import EventPublisher, KubeGateway, ResponsePublisher

KubeObject = dict[str, Any]

NAMESPACE = "dispatcher"
T0 = "2025-01-10T10:00:00Z"
T1 = "2025-01-10T10:05:00Z"
SETTINGS = Settings.from_env(
    {
        "JOB_NAMESPACE": NAMESPACE,
        "JOB_MAX_RUN_SECONDS": "600",
        "IMAGE_PULL_GRACE_SECONDS": "60",
        "IDEMPOTENCY_WINDOW_SECONDS": "0",  # answered Jobs go at once; WINDOW turns it on
    }
)
WINDOW = dataclasses.replace(SETTINGS, idempotency_window_seconds=300)
TASK = Task(
    id="t-1",
    image="localhost/testbox:1.0",
    volume_mount_path="/work",
    cmd=("/bin/sh", "-c"),
    args=("echo hello",),
)


# --- the API server ---------------------------------------------------------------------------


class FakeKube:
    """An in-memory API server for one namespace, behind the `KubeGateway` port."""

    def __init__(self) -> None:
        self.jobs: dict[str, KubeObject] = {}
        self.deleted: dict[str, KubeObject] = {}
        """The last state of each deleted Job, by name."""
        self.pods: list[KubeObject] = []
        self.events: list[KubeObject] = []
        self.workloads: list[KubeObject] = []
        """Kueue's Workloads (their `kueue.x-k8s.io/job-uid` label selects them)."""
        self.logs: dict[str, str | KubeError] = {}
        """Log text by Pod name, or the error the API server answers for it."""
        self.tombstones: dict[str, KubeObject] = {}
        """ConfigMaps left by cancels of tasks that had no Job yet, by name."""
        self._versions = itertools.count(48213)
        self._uids = itertools.count(1)
        self._failures: dict[str, deque[KubeError]] = defaultdict(deque)
        self._interleaved: dict[str, deque[Callable[[], object]]] = defaultdict(deque)
        self.calls: list[str] = []
        """Every call made through the port, in order (e.g. "get_job")."""

    # -- scenario controls --------------------------------------------------------------------

    def fail_next(self, call: str, error: KubeError) -> None:
        """The next `call` (e.g. "create_job") fails with `error`."""
        self._failures[call].append(error)

    def before_next(self, call: str, action: Callable[[], object]) -> None:
        """Run `action` just before the next `call`: another client acting in between."""
        self._interleaved[call].append(action)

    def update_status(self, name: str, status: Mapping[str, Any]) -> KubeObject:
        """The Job controller writes the Job's status."""
        job = self.jobs[name]
        job["status"] = copy.deepcopy(dict(status))
        job["metadata"]["resourceVersion"] = self._next_version()
        return copy.deepcopy(job)

    def set_suspend(self, name: str, suspend: bool, *, start_time: str | None = None) -> KubeObject:
        """Kueue admits (False) or evicts (True) the Job; the Job controller resets startTime."""
        job = self.jobs[name]
        job["spec"]["suspend"] = suspend
        job["status"] = {"startTime": start_time} if start_time and not suspend else {}
        job["metadata"]["resourceVersion"] = self._next_version()
        return copy.deepcopy(job)

    def remove_job(self, name: str) -> None:
        """The Job is gone at once, finalizers or not (someone removed them by hand)."""
        self.deleted[name] = self.jobs.pop(name)

    def add_pod(self, pod: KubeObject) -> None:
        self.pods.append(copy.deepcopy(pod))

    def annotations(self, name: str) -> dict[str, str]:
        """The annotations of the Job as it is now, or as it was when it was deleted."""
        job = self.jobs.get(name) or self.deleted[name]
        return dict(job["metadata"].get("annotations") or {})

    # -- KubeGateway --------------------------------------------------------------------------

    def create_job(self, manifest: Mapping[str, Any]) -> KubeObject:
        self._enter("create_job")
        name = manifest["metadata"]["name"]
        if name in self.jobs:
            raise ConflictError(
                f'create Job {name}: jobs.batch "{name}" already exists (HTTP 409)', 409
            )
        job = copy.deepcopy(dict(manifest))
        uid = f"0b6f1b0e-5d1a-4c7e-9d8b-{next(self._uids):012x}"
        job["metadata"].update(
            uid=uid, resourceVersion=self._next_version(), generation=1, creationTimestamp=T0
        )
        _default_job_spec(job["spec"], name, uid)
        job["status"] = {}
        self.jobs[name] = job
        return copy.deepcopy(job)

    def get_job(self, name: str) -> KubeObject | None:
        self._enter("get_job")
        job = self.jobs.get(name)
        return None if job is None else copy.deepcopy(job)

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> KubeObject:
        """JSON merge patch (RFC 7386); a metadata.resourceVersion in it is a precondition."""
        self._enter("patch_job")
        job = self.jobs.get(name)
        if job is None:
            raise NotFoundError(f'patch Job {name}: jobs.batch "{name}" not found (HTTP 404)', 404)
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != job["metadata"]["resourceVersion"]:
            raise ConflictError(
                f'patch Job {name}: Operation cannot be fulfilled on jobs.batch "{name}": the '
                "object has been modified; please apply your changes to the latest version and "
                "try again (HTTP 409)",
                409,
            )
        patched: KubeObject = merge_patch(job, patch)
        patched["metadata"]["resourceVersion"] = self._next_version()
        self.jobs[name] = patched
        return copy.deepcopy(patched)

    def annotate_job(
        self, name: str, annotations: Mapping[str, str | None], *, resource_version: str
    ) -> KubeObject:
        """One conditional merge patch, as the real client sends it (so it counts as
        "patch_job" in `calls`, and `before_next("patch_job", …)` comes before it)."""
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
        """Set the annotations (and the TTL) and drop the finalizer; a Job being deleted then
        goes."""
        self._enter("release_job")
        job = self.jobs.get(name)
        if job is None:
            return None
        if resource_version is not None and resource_version != job["metadata"]["resourceVersion"]:
            raise ConflictError(f"release Job {name}: the object has been modified (HTTP 409)", 409)
        released = copy.deepcopy(job)
        if ttl_seconds is not None:
            released["spec"]["ttlSecondsAfterFinished"] = ttl_seconds
        meta = released["metadata"]
        meta.setdefault("annotations", {}).update(annotations)
        meta["finalizers"] = [f for f in meta.get("finalizers", []) if f != finalizer]
        meta["resourceVersion"] = self._next_version()
        if meta.get("deletionTimestamp") and not meta["finalizers"]:
            # Like the API server: deleted as stored *before* this patch, which is what the
            # DELETED event shows.
            self.deleted[name] = self.jobs.pop(name)
        else:
            self.jobs[name] = released
            if _expired(released):  # the TTL controller deletes a finished Job with TTL 0
                self._delete(name)
        return copy.deepcopy(released)

    def delete_job(self, name: str) -> None:
        """Like the API server: a Job with finalizers is only marked for deletion; deleting a
        Job that is already gone is not an error."""
        self._enter("delete_job")
        self._delete(name)

    def _delete(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None:
            return
        if job["metadata"].get("finalizers"):
            job["metadata"].setdefault("deletionTimestamp", T0)
            job["metadata"]["resourceVersion"] = self._next_version()
        else:
            self.deleted[name] = self.jobs.pop(name)

    def create_tombstone(self, manifest: Mapping[str, Any]) -> KubeObject | None:
        self._enter("create_tombstone")
        name = manifest["metadata"]["name"]
        if name in self.tombstones:
            return None
        made = copy.deepcopy(dict(manifest))
        made["metadata"]["creationTimestamp"] = T0
        made["metadata"]["uid"] = f"cm-{next(self._uids)}"
        self.tombstones[name] = made
        return copy.deepcopy(made)

    def get_tombstone(self, name: str) -> KubeObject | None:
        self._enter("get_tombstone")
        found = self.tombstones.get(name)
        return copy.deepcopy(found) if found is not None else None

    def list_tombstones(self, selector: str) -> list[KubeObject]:
        self._enter("list_tombstones")
        return [copy.deepcopy(t) for t in self.tombstones.values() if _matches(t, selector)]

    def delete_tombstone(self, name: str, *, uid: str | None = None) -> None:
        self._enter("delete_tombstone")
        found = self.tombstones.get(name)
        if found is not None and (uid is None or found["metadata"]["uid"] == uid):
            del self.tombstones[name]

    def list_pods(self, selector: str) -> list[KubeObject]:
        self._enter("list_pods")
        return [copy.deepcopy(pod) for pod in self.pods if _matches(pod, selector)]

    def read_log(self, pod: str, container: str, cap: int) -> str:
        """The whole log: cutting it to `cap` bytes is the real client's business."""
        self._enter("read_log")
        if not any(item["metadata"]["name"] == pod for item in self.pods):
            raise NotFoundError(f'read the log of Pod {pod}: pods "{pod}" not found (HTTP 404)')
        if container != CONTAINER_NAME:
            raise PermanentKubeError(f"read the log of Pod {pod}: no container {container}", 400)
        log = self.logs.get(pod, "")
        if isinstance(log, KubeError):
            raise log
        return log

    def list_objects(
        self, kind: str, selector: str, fields: str = ""
    ) -> tuple[list[KubeObject], str]:
        self._enter("list_objects")
        objects = {
            "jobs": list(self.jobs.values()),
            "pods": self.pods,
            "events": self.events,
            "workloads": self.workloads,
        }
        items = [
            copy.deepcopy(obj)
            for obj in objects[kind]
            if _matches(obj, selector) and _fields_match(obj, fields)
        ]
        return items, str(next(self._versions))

    def list_each(
        self, kind: str, selector: str, fields: str, handle: Callable[[KubeObject], None]
    ) -> str:
        items, version = self.list_objects(kind, selector, fields)
        for item in items:
            handle(item)
        return version

    def watch_objects(
        self,
        kind: str,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        fields: str = "",
    ) -> Iterator[KubeObject]:
        """The server closes every watch at once (watch scenarios use their own fake)."""
        self._enter("watch_objects")
        return iter(())

    # -- plumbing -----------------------------------------------------------------------------

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        while self._interleaved[call]:
            self._interleaved[call].popleft()()
        if self._failures[call]:
            raise self._failures[call].popleft()

    def _next_version(self) -> str:
        return str(next(self._versions))


def _expired(job: KubeObject) -> bool:
    """A finished Job whose TTL after finishing is 0, not yet being deleted."""
    ttl = job["spec"].get("ttlSecondsAfterFinished")
    return ttl == 0 and job_finished(job) and not job["metadata"].get("deletionTimestamp")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _default_job_spec(spec: dict[str, Any], name: str, uid: str) -> None:
    """What the API server adds to a created Job's spec."""
    controller = {CONTROLLER_UID_LABEL: uid, JOB_NAME_LABEL: name}
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    spec["selector"] = {"matchLabels": {CONTROLLER_UID_LABEL: uid}}
    labels = spec["template"]["metadata"]["labels"]
    labels.update({**controller, "controller-uid": uid, "job-name": name})


def _fields_match(obj: Mapping[str, Any], fields: str) -> bool:
    """Equality field selectors such as `involvedObject.uid=u-1,reason=FailedCreate`."""
    for term in filter(None, fields.split(",")):
        path, _, expected = term.partition("=")
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if str(value) != expected:
            return False
    return True


def failed_create(job: Mapping[str, Any], message: str) -> KubeObject:
    """The Event the Job controller records when it cannot create the Job's pod."""
    meta = job["metadata"]
    return {
        "metadata": {"name": f"{meta['name']}.1", "namespace": meta["namespace"]},
        "involvedObject": {"kind": "Job", "name": meta["name"], "uid": meta["uid"]},
        "reason": "FailedCreate",
        "type": "Warning",
        "message": message,
        "lastTimestamp": "2025-01-10T10:00:05Z",
    }


def workload_for(job: Mapping[str, Any], *conditions: Any, active: bool = True) -> KubeObject:
    """The Workload Kueue makes for `job`, with the given status conditions."""
    meta = job["metadata"]
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": f"job-{meta['name']}-5f2c1",
            "namespace": meta["namespace"],
            "uid": f"wl-{meta['uid']}",
            "labels": {"kueue.x-k8s.io/job-uid": meta["uid"]},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
            ],
        },
        "spec": {"active": active, "queueName": "team-a"},
        "status": {"conditions": list(conditions)},
    }


def _matches(obj: Mapping[str, Any], selector: str) -> bool:
    """Equality-based label selector: `key=value,key=value`."""
    labels = obj["metadata"].get("labels") or {}
    wanted = (term.split("=", 1) for term in selector.split(",") if term)
    return all(labels.get(key) == value for key, value in wanted)


# --- the broker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    response: Response
    route: ReplyRoute
    message_id: str


class FakePublisher:
    """Records each confirmed response; `error` makes every publish fail (broker gone)."""

    def __init__(
        self,
        *,
        error: Exception | None = None,
        on_publish: Callable[[Published], None] | None = None,
    ) -> None:
        self.published: list[Published] = []
        self._error = error
        self._on_publish = on_publish

    def publish(self, response: Response, route: ReplyRoute, message_id: str) -> None:
        if self._error is not None:
            raise self._error
        published = Published(response, route, message_id)
        if self._on_publish is not None:
            self._on_publish(published)
        self.published.append(published)

    @property
    def responses(self) -> list[Response]:
        return [item.response for item in self.published]


class FakeEvents:
    """Records each progress event with its correlation id and message id."""

    def __init__(self) -> None:
        self.events: list[tuple[ProgressEvent, str | None, str]] = []

    def publish_event(
        self, event: ProgressEvent, correlation_id: str | None, message_id: str
    ) -> None:
        self.events.append((event, correlation_id, message_id))


if TYPE_CHECKING:  # the fakes must keep fitting the ports they stand in for
    _kube: KubeGateway = FakeKube()
    _publisher: ResponsePublisher = FakePublisher()
    _events: EventPublisher = FakeEvents()


# --- canned objects ---------------------------------------------------------------------------


def create_job_for(
    kube: FakeKube, task: Task = TASK, route: ReplyRoute | None = None
) -> KubeObject:
    """The Job `submit` would create for `task`, as the API server returns it."""
    return kube.create_job(build_job(task, route or ReplyRoute(), SETTINGS))


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> Any:
    return {
        "type": kind,
        "status": status,
        "lastProbeTime": T1,
        "lastTransitionTime": T1,
        "reason": reason,
        "message": message,
    }


def job_status(*conditions: Any, active: int = 0, succeeded: int = 0, failed: int = 0) -> Any:
    status: dict[str, Any] = {
        "startTime": T0,
        "terminating": 0,
        "ready": 0,
        "uncountedTerminatedPods": {},
    }
    for key, count in (("active", active), ("succeeded", succeeded), ("failed", failed)):
        if count:
            status[key] = count
    if conditions:
        status["conditions"] = list(conditions)
    if succeeded:
        status["completionTime"] = T1
    return status


POLICY_MESSAGE = (
    "Container task for pod dispatcher/t-1-x7k2p failed with exit code 3 matching FailJob rule "
    "at index 1"
)
DEADLINE_MESSAGE = "Job was active longer than specified deadline"
RUNNING = job_status(active=1)
COMPLETE = job_status(
    condition("SuccessCriteriaMet", reason="CompletionsReached"),
    condition("Complete", reason="CompletionsReached", message="Reached expected number of pods"),
    succeeded=1,
)
FAILED = job_status(
    condition("FailureTarget", reason="PodFailurePolicy", message=POLICY_MESSAGE),
    condition("Failed", reason="PodFailurePolicy", message=POLICY_MESSAGE),
    failed=1,
)
DEADLINE = job_status(
    condition("FailureTarget", reason="DeadlineExceeded", message=DEADLINE_MESSAGE),
    condition("Failed", reason="DeadlineExceeded", message=DEADLINE_MESSAGE),
    failed=1,
)


def terminated(exit_code: int, reason: str = "Completed") -> Any:
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": T0,
            "finishedAt": T1,
            "containerID": "containerd://3f1c9a",
        }
    }


def waiting(reason: str, message: str | None = None) -> Any:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


SCHEDULED = condition("PodScheduled")
UNSCHEDULABLE_MESSAGE = (
    "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: "
    "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)
"""No node could ever take the pod: its request exceeds every node's allocatable."""
UNSCHEDULABLE = condition("PodScheduled", "False", "Unschedulable", UNSCHEDULABLE_MESSAGE)
FULL_MESSAGE = (
    "0/1 nodes are available: 1 Insufficient memory. no new claims to deallocate, preemption: "
    "0/1 nodes are available: 1 No preemption victims found for incoming pod."
)
"""The pod only waits for room: the node is full for now."""
FULL = condition("PodScheduled", "False", "Unschedulable", FULL_MESSAGE)
PULL_MESSAGE = (
    'failed to pull and unpack image "localhost/testbox:1.0": failed to resolve reference '
    '"localhost/testbox:1.0": not found'
)


def make_pod(
    job: KubeObject,
    suffix: str = "x7k2p",
    *,
    phase: str = "Pending",
    state: Any = None,
    scheduled: Any = SCHEDULED,
    reason: str | None = None,
    uid: str | None = None,
) -> KubeObject:
    """A pod the Job controller made from `job`'s template (labels, owner, image)."""
    meta, template = job["metadata"], job["spec"]["template"]
    name = f"{meta['name']}-{suffix}"
    image = template["spec"]["containers"][0]["image"]
    status: dict[str, Any] = {"phase": phase, "conditions": [scheduled], "qosClass": "Burstable"}
    if reason:
        status["reason"] = reason
        status["message"] = "Pod was active on the node longer than the specified deadline"
    if state is not None:
        status["containerStatuses"] = [
            {
                "name": CONTAINER_NAME,
                "state": state,
                "lastState": {},
                "ready": False,
                "restartCount": 0,
                "image": image,
                "imageID": "",
                "started": False,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "uid": uid or f"7c9e6679-7425-40de-944b-{suffix.encode().hex()[:12]:0>12}",
            "resourceVersion": "48300",
            "creationTimestamp": T0,
            "labels": dict(template["metadata"]["labels"]),
            **(
                {"annotations": dict(template["metadata"]["annotations"])}
                if template["metadata"].get("annotations")
                else {}
            ),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": CONTAINER_NAME, "image": image}],
            **({"nodeName": "node-1"} if scheduled is SCHEDULED else {}),
        },
        "status": status,
    }
