"""The Kubernetes client counts every request it makes, by verb and resource, and lists page by
page (against an in-process HTTP transport: no cluster)."""

from __future__ import annotations

import json
from typing import Any

import httpx2

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
        http, "ns", on_request=lambda verb, resource: counted.append((verb, resource))
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
