"""The Kubernetes client tells of every request it makes, by verb and resource with the seconds
it took (failed ones too), and of each one the API server turned away with 429; it lists page by
page (against an in-process HTTP transport: no cluster)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from dispatcher.errors import TransientKubeError
from dispatcher.kube.client import KubeClient


def serve(request: httpx2.Request) -> httpx2.Response:
    path, params = request.url.path, request.url.params
    if path.endswith("/log"):
        return httpx2.Response(200, content=b"done\n")
    if request.method == "GET" and path.endswith("/jobs") and params.get("watch"):
        return httpx2.Response(200, content=b"")
    if request.method == "GET" and path.endswith("/jobs"):
        page = int(params.get("continue") or 0)
        items = [{"metadata": {"name": f"j-{page}-{i}"}} for i in range(2)]
        more = {"continue": str(page + 1)} if page < 2 else {}
        return httpx2.Response(
            200, json={"items": items, "metadata": {"resourceVersion": "7", **more}}
        )
    return httpx2.Response(200, json={"metadata": {"name": "t-1"}})


def client(counted: list[tuple[str, str]]) -> KubeClient:
    http = httpx2.Client(transport=httpx2.MockTransport(serve), base_url="https://api.test")
    return KubeClient(
        http, "ns", on_request=lambda verb, resource, _: counted.append((verb, resource))
    )


def test_every_request_is_counted_by_verb_and_resource() -> None:
    counted: list[tuple[str, str]] = []
    kube = client(counted)

    kube.create_job({"metadata": {"name": "t-1"}})
    kube.get_job("t-1")
    kube.patch_job("t-1", {"metadata": {"annotations": {"a": "b"}}})
    kube.read_log("t-1-x", "task", 100)
    kube.list_pods("a=b")
    kube.delete_job("t-1")
    list(kube.watch_objects("jobs", "a=b", "7", 5))

    assert counted == [
        ("create", "jobs"),
        ("get", "jobs"),
        ("patch", "jobs"),
        ("log", "pods"),
        ("list", "pods"),
        ("delete", "jobs"),
        ("watch", "jobs"),
    ]


def test_a_failed_request_is_told_with_its_time() -> None:
    told: list[tuple[str, str, float]] = []

    def fail(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/log"):
            raise httpx2.ConnectError("refused")
        return httpx2.Response(500, json={"message": "etcd is away"})

    http = httpx2.Client(transport=httpx2.MockTransport(fail), base_url="https://api.test")
    kube = KubeClient(http, "ns", on_request=lambda *request: told.append(request))

    with pytest.raises(TransientKubeError, match="etcd is away"):
        kube.patch_job("t-1", {"metadata": {"annotations": {"a": "b"}}})
    with pytest.raises(TransientKubeError, match="ConnectError"):
        kube.read_log("t-1-x", "task", 100)

    assert [(verb, resource) for verb, resource, _ in told] == [("patch", "jobs"), ("log", "pods")]
    assert all(0 <= seconds < 5 for _, _, seconds in told)


def test_a_list_hands_on_each_page_as_it_arrives() -> None:
    counted: list[tuple[str, str]] = []
    seen: list[Any] = []

    version = client(counted).list_each("jobs", "a=b", "", seen.append, page_size=2)

    assert version == "7"
    assert [item["metadata"]["name"] for item in seen] == [
        f"j-{page}-{i}" for page in range(3) for i in range(2)
    ]
    assert counted == [("list", "jobs")] * 3
    assert json.dumps(seen)  # plain JSON dicts


def discovery(served: bool) -> KubeClient:
    """An API server with Kueue's API served or not, and one LocalQueue `team-a`."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if not served:
            return httpx2.Response(404, text="404 page not found")
        if path == "/apis/kueue.x-k8s.io/v1beta2":
            resources = [{"name": "workloads"}, {"name": "localqueues"}]
            return httpx2.Response(200, json={"kind": "APIResourceList", "resources": resources})
        if path == "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/localqueues/team-a":
            return httpx2.Response(200, json={"metadata": {"name": "team-a"}})
        return httpx2.Response(404, json={"kind": "Status", "message": "not found"})

    http = httpx2.Client(transport=httpx2.MockTransport(answer), base_url="https://api.test")
    return KubeClient(http, "ns")


def test_kueue_is_served_only_when_discovery_lists_the_resource() -> None:
    counted: list[tuple[str, str]] = []
    kube = discovery(served=True)
    kube.on_request = lambda verb, resource, _: counted.append((verb, resource))

    assert kube.serves("workloads") is True
    assert counted == [("get", "discovery")]
    assert discovery(served=True).serves("localqueues") is True
    assert discovery(served=False).serves("workloads") is False


def test_a_local_queue_is_read_by_name_and_a_missing_one_is_none() -> None:
    kube = discovery(served=True)

    assert kube.get_object("localqueues", "team-a") == {"metadata": {"name": "team-a"}}
    assert kube.get_object("localqueues", "team-b") is None


def test_a_request_turned_away_with_429_is_told_as_throttled() -> None:
    throttled: list[str] = []

    def busy(request: httpx2.Request) -> httpx2.Response:
        if request.url.params.get("watch") or request.url.path.endswith("/jobs/t-2"):
            return httpx2.Response(500, json={"message": "etcd is away"})
        return httpx2.Response(429, json={"message": "too many requests, please try again"})

    http = httpx2.Client(transport=httpx2.MockTransport(busy), base_url="https://api.test")
    kube = KubeClient(http, "ns")
    kube.on_throttled = lambda: throttled.append("429")

    with pytest.raises(TransientKubeError, match="HTTP 429"):
        kube.get_job("t-1")
    with pytest.raises(TransientKubeError, match="HTTP 429"):
        kube.read_log("t-1-x", "task", 100)  # a streamed request
    with pytest.raises(TransientKubeError, match="HTTP 500"):
        kube.get_job("t-2")
    with pytest.raises(TransientKubeError, match="HTTP 500"):
        list(kube.watch_objects("jobs", "a=b", "7", 5))

    assert throttled == ["429", "429"]


def test_an_annotation_patch_is_one_conditional_merge_patch() -> None:
    sent: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json={"metadata": {"name": "t-1"}})

    http = httpx2.Client(transport=httpx2.MockTransport(record), base_url="https://api.test")
    KubeClient(http, "ns").annotate_job("t-1", {"a": "b", "c": None}, resource_version="42")

    [request] = sent
    assert (request.method, request.url.path) == ("PATCH", "/apis/batch/v1/namespaces/ns/jobs/t-1")
    assert request.headers["content-type"] == "application/merge-patch+json"
    assert json.loads(request.content) == {
        "metadata": {"resourceVersion": "42", "annotations": {"a": "b", "c": None}}
    }
