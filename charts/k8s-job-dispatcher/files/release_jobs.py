"""Run by the chart's pre-delete hook (templates/uninstall.yaml) in the dispatcher's image, before
`helm uninstall` deletes anything: it stops the dispatcher, then lets go of its Jobs.

Every Job of the dispatcher carries the finalizer `job-dispatcher.io/answer` until its task is
answered, and only a running dispatcher drops it: Jobs left behind would hold their namespace in
Terminating for ever. So, in this order:

1. scale the Deployment to zero and wait for its pods to go: it takes no more tasks (those not
   yet taken stay in the broker, for the next installation) and makes no more Jobs;
2. drop the finalizer of each of the installation's Jobs and delete it (its pods with it), and
   delete its tombstones: a task still running is stopped and gets no answer;
3. wait until the Jobs are gone.

Standard library only (the image's Python); the service account's token and CA, and the API
server's address from KUBERNETES_SERVICE_HOST/PORT, as every in-cluster client reads them.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
FINALIZER = "job-dispatcher.io/answer"
NAME = os.environ["DISPATCHER_NAME"]
NAMESPACE = os.environ["DISPATCHER_NAMESPACE"]
JOBS = os.environ["JOB_NAMESPACE"]
TIMEOUT = float(os.environ.get("TIMEOUT_SECONDS", "300"))
OWNED = f"app.kubernetes.io/managed-by=k8s-job-dispatcher,job-dispatcher.io/instance={NAME}"
SERVER = "https://{}:{}".format(
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
)
TLS = ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt")


def call(method: str, path: str, body: Any = None, kind: str = "application/json") -> Any:
    """One API request; the answer's JSON, or None when the object is not (or no longer) there."""
    with open(f"{ACCOUNT}/token") as token:  # re-read: the kubelet rotates it
        headers = {"Authorization": f"Bearer {token.read().strip()}", "Content-Type": kind}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(SERVER + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, context=TLS, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        message = error.read().decode()[:500]
        raise SystemExit(f"{method} {path}: HTTP {error.code}: {message}") from None


def names(path: str, selector: str) -> list[str]:
    found = call("GET", f"{path}?labelSelector={urllib.parse.quote(selector)}") or {"items": []}
    return [item["metadata"]["name"] for item in found["items"]]


def wait_until_gone(what: str, path: str, selector: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while left := names(path, selector):
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(left)} {what} still there after {TIMEOUT:g} s: {left[:10]}")
        time.sleep(1)


def stop_dispatcher() -> None:
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}"
    scaled = call("PATCH", path, {"spec": {"replicas": 0}}, "application/merge-patch+json")
    print(f"Deployment {NAMESPACE}/{NAME}: " + ("scaled to zero" if scaled else "not found"))
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    wait_until_gone("dispatcher pods", pods, f"app.kubernetes.io/name={NAME}")


def release_jobs() -> None:
    jobs = f"/apis/batch/v1/namespaces/{JOBS}/jobs"
    released = names(jobs, OWNED)
    for job in released:
        drop = {"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}}
        call("PATCH", f"{jobs}/{job}", drop, "application/strategic-merge-patch+json")
        call("DELETE", f"{jobs}/{job}", {"propagationPolicy": "Background"})
    print(f"{len(released)} Jobs of {NAME} in {JOBS} deleted without an answer: {released}")
    configmaps = f"/api/v1/namespaces/{JOBS}/configmaps"
    tombstones = names(configmaps, f"{OWNED},job-dispatcher.io/tombstone=true")
    for tombstone in tombstones:
        call("DELETE", f"{configmaps}/{tombstone}")
    print(f"{len(tombstones)} tombstones deleted")
    wait_until_gone("Jobs", jobs, OWNED)


if __name__ == "__main__":
    stop_dispatcher()
    release_jobs()
    print("done: nothing of the dispatcher holds its namespaces")
    sys.exit(0)
