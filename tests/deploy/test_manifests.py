"""The manifests as users apply them, on the real API server, and the dispatcher image running
in the cluster as the Deployment: in-cluster configuration, least privilege, readiness."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.monitoring import RULES
from harness.stack import REPO, kubectl, stack_env
from kombu import Connection, Exchange, Producer, Queue

from dispatcher.config import Settings
from dispatcher.kube.jobspec import build_job
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import parse_task

pytestmark = pytest.mark.cluster
SA = "system:serviceaccount:dispatcher:dispatcher"
JOBS = "dispatcher-jobs"  # the namespace of the Jobs in the recommended two-namespace layout


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ with amqp.env holding the local stack's pod credentials."""
    env = stack_env()
    root = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(REPO / "manifests", root)
    (root / "base" / "amqp.env").write_text(
        f"AMQP_USER={env['POD_AMQP_USER']}\nAMQP_PASSWORD={env['POD_AMQP_PASSWORD']}\n"
    )
    made = subprocess.run(  # as the kustomization's comment tells operators to
        [sys.executable, "-m", "dispatcher.cli", "permissions", "--definitions"],
        env={
            **os.environ,
            "AMQP_USER": env["POD_AMQP_USER"],
            "AMQP_PASSWORD": env["POD_AMQP_PASSWORD"],
            "PRODUCER_AMQP_PASSWORD": env["PRODUCER_AMQP_PASSWORD"],
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (root / "base" / "definitions.json").write_text(made.stdout)
    return root


def render(path: Path) -> list[dict[str, Any]]:
    out = kubectl("kustomize", str(path)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def dry_run(documents: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Every object validated by the API server without being created. Its Namespaces are
    created for real first: a server-side dry run refuses objects in a namespace that does not
    exist yet."""
    namespaces = [d for d in documents if d["kind"] == "Namespace"]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces))
    text = yaml.safe_dump_all(documents)
    return kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)


def test_the_base_is_accepted_by_the_api_server(manifests: Path) -> None:
    documents = render(manifests / "base")
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
    assert "Deployment/dispatcher" in kinds
    assert "StatefulSet/rabbitmq" in kinds
    (broker,) = [d for d in documents if d["kind"] == "StatefulSet"]
    container = broker["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in container.get("env", []) if "DEFAULT" in e["name"]]  # no admin user
    (users,) = [d for d in documents if d["metadata"]["name"].startswith("rabbitmq-definitions")]
    loaded = json.loads(base64.b64decode(users["data"]["definitions.json"]))
    assert [u["name"] for u in loaded["users"]] == [stack_env()["POD_AMQP_USER"], "producer"]
    for doc in documents:  # the local stack already has this PV with another (immutable) source
        if doc["kind"] == "PersistentVolume":
            doc["metadata"]["name"] += "-dry-run"
    result = dry_run(documents)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(documents)


def test_the_kueue_overlay_hands_queueing_to_kueue_with_two_more_reads(manifests: Path) -> None:
    documents = render(manifests / "overlays" / "kueue")
    (role,) = [d for d in documents if d["kind"] == "Role"]
    kueue_rules = [rule for rule in role["rules"] if "kueue.x-k8s.io" in rule["apiGroups"]]
    (config,) = [d for d in documents if d["metadata"]["name"].startswith("dispatcher-settings")]
    settings = Settings.from_env(config["data"])
    for doc in documents:  # as in the base's test: the stack already has this PV
        if doc["kind"] == "PersistentVolume":
            doc["metadata"]["name"] += "-dry-run"

    assert role["metadata"]["namespace"] == JOBS
    assert kueue_rules == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list", "watch"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
    ]
    assert (settings.kueue_local_queue, settings.max_active_jobs) == ("dispatcher", 0)
    result = dry_run(documents)
    assert result.returncode == 0, result.stderr


def test_the_local_overlay_is_accepted_by_the_api_server(manifests: Path) -> None:
    documents = render(manifests / "overlays" / "local")
    assert not [d for d in documents if d["kind"] == "StatefulSet"]
    result = dry_run(documents)
    assert result.returncode == 0, result.stderr


def test_the_monitoring_component_adds_the_charts_metrics_service_rules_and_dashboard(
    manifests: Path,
) -> None:
    overlay = manifests / "overlays" / "with-monitoring"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../../base"],
                "components": ["../../components/monitoring"],
            }
        )
    )
    base = render(manifests / "base")
    documents = render(overlay)
    added = {f"{d['kind']}/{d['metadata']['name']}": d for d in documents if d not in base}
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]

    assert sorted(added) == [
        "ConfigMap/dispatcher-dashboard",
        "PrometheusRule/dispatcher",
        "Service/dispatcher-metrics",
        "ServiceMonitor/dispatcher",
    ]
    assert added["PrometheusRule/dispatcher"]["spec"] == yaml.safe_load(RULES.read_text())
    service = added["Service/dispatcher-metrics"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    ports = [port["name"] for port in pod["spec"]["containers"][0]["ports"]]
    assert service["ports"][0]["targetPort"] in ports
    core = [added["Service/dispatcher-metrics"], added["ConfigMap/dispatcher-dashboard"]]
    namespaces = [d for d in documents if d["kind"] == "Namespace"]
    result = dry_run(namespaces + core)  # (the stack has no Prometheus Operator CRDs)
    assert result.returncode == 0, result.stderr


NEEDED = [
    ("create", "jobs.batch"),
    ("get", "jobs.batch"),
    ("list", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("list", "pods"),
    ("watch", "pods"),
    ("get", "pods/log"),
    ("list", "events"),
    ("watch", "events"),
    ("get", "persistentvolumeclaims"),
    ("create", "configmaps"),
    ("get", "configmaps"),
    ("list", "configmaps"),
    ("delete", "configmaps"),
]
FORBIDDEN = [
    ("update", "configmaps", JOBS),
    ("patch", "configmaps", JOBS),
    ("create", "configmaps", "dispatcher"),
    ("get", "secrets", "dispatcher"),
    ("get", "secrets", JOBS),
    ("create", "jobs.batch", "dispatcher"),  # its own namespace: not where Jobs run
    ("list", "pods", "dispatcher"),
    ("get", "configmaps", "dispatcher"),
    ("create", "pods", JOBS),
    ("create", "pods/exec", JOBS),
    ("update", "jobs.batch", JOBS),
    ("create", "networkpolicies.networking.k8s.io", JOBS),
    ("delete", "networkpolicies.networking.k8s.io", JOBS),
    ("create", "rolebindings.rbac.authorization.k8s.io", JOBS),
    ("get", "pods", JOBS),
    ("create", "events", JOBS),
    ("list", "persistentvolumeclaims", JOBS),
    ("delete", "persistentvolumeclaims", JOBS),
    ("list", "secrets", "dispatcher"),
    ("create", "pods/exec", "dispatcher"),
    ("delete", "pods", "dispatcher"),
    ("create", "pods", "dispatcher"),
    ("update", "jobs.batch", "dispatcher"),
    ("create", "jobs.batch", "default"),
    ("list", "pods", "kube-system"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "dispatcher"),
    ("patch", "deployments.apps", "dispatcher"),
    ("create", "serviceaccounts/token", "dispatcher"),
    ("list", "nodes", ""),
    ("list", "namespaces", ""),
    ("get", "pods", "dispatcher"),
    ("get", "pods/log", "kube-system"),
    ("create", "events", "dispatcher"),
    ("delete", "events", "dispatcher"),
    ("create", "persistentvolumes", ""),
    ("list", "persistentvolumeclaims", "dispatcher"),
    ("delete", "persistentvolumeclaims", "dispatcher"),
    ("get", "persistentvolumes", ""),
]


@pytest.fixture(scope="module")
def deployed(manifests: Path) -> Iterator[None]:
    """The local overlay applied, with the image built by `make image`, rolled out."""
    result = kubectl("apply", "-k", str(manifests / "overlays" / "local"), check=False)
    assert result.returncode == 0, result.stderr
    try:
        yield
    finally:
        kubectl(
            "-n", "dispatcher", "delete", "deployment", "dispatcher", "--wait=true", check=False
        )


def can_i(verb: str, resource: str, namespace: str = JOBS) -> str:
    """`kubectl auth can-i` as the dispatcher's service account; `pods/log` means the
    subresource (a bare `pods/log` argument would ask about a pod named "log")."""
    kind, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, kind, f"--as={SA}"]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["-n", namespace] if namespace else []
    return kubectl(*args, check=False).stdout.strip()


@pytest.mark.parametrize(("verb", "resource"), NEEDED, ids=str)
def test_the_service_account_may_do_what_the_dispatcher_needs(
    deployed: None, verb: str, resource: str
) -> None:
    assert can_i(verb, resource) == "yes"


@pytest.mark.parametrize(("verb", "resource", "namespace"), FORBIDDEN, ids=str)
def test_the_service_account_may_not_do_anything_else(
    deployed: None, verb: str, resource: str, namespace: str
) -> None:
    assert can_i(verb, resource, namespace) == "no"


def wait_ready(timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        out = kubectl("-n", "dispatcher", "get", "deployment", "dispatcher", "-o", "json").stdout
        deployment = json.loads(out)
        status = deployment.get("status", {})
        if status.get("readyReplicas") == 1 and status.get("updatedReplicas") == 1:
            return deployment
        if time.monotonic() > deadline:
            pods = kubectl(
                "-n", "dispatcher", "describe", "pods", "-l", "app.kubernetes.io/name=dispatcher"
            ).stdout
            raise AssertionError(f"dispatcher not ready: {json.dumps(status)}\n{pods[-4000:]}")
        time.sleep(1)


def test_the_image_runs_in_the_cluster_and_answers_a_task(deployed: None) -> None:
    deployment = wait_ready()
    pod = json.loads(
        kubectl(
            "-n",
            "dispatcher",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=dispatcher",
            "-o",
            "json",
        ).stdout
    )["items"][0]
    assert pod["spec"]["serviceAccountName"] == "dispatcher"
    assert pod["status"]["containerStatuses"][0]["image"].endswith("k8s-job-dispatcher:0.1.0")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    env = stack_env()
    url = f"amqp://{env['AMQP_USER']}:{env['AMQP_PASSWORD']}@127.0.0.1:5672//"
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        reply, _, _ = channel.queue_declare("", exclusive=True)
        task_id = "in-cluster-" + uuid.uuid4().hex[:6]
        body = json.dumps(
            {
                "id": task_id,
                "image": env["TEST_IMAGE"],
                "volume_mount_path": "/work",
                "working_dir": "/work",
                "cmd": ["/bin/sh", "-c", "cat seed.txt; id -u"],
            }
        )
        Producer(channel).publish(
            body,
            exchange=Exchange("tasks", type="direct", durable=True),
            routing_key="task",
            declare=[
                Queue(
                    "tasks",
                    Exchange("tasks", type="direct", durable=True),
                    routing_key="task",
                    durable=True,
                    queue_arguments={"x-queue-type": "quorum"},
                )
            ],
            reply_to=reply,
            correlation_id=task_id,
            delivery_mode=2,
            content_type="application/json",
        )
        deadline = time.monotonic() + 120
        while (message := channel.basic_get(reply, no_ack=True)) is None:
            assert time.monotonic() < deadline, "no response from the in-cluster dispatcher"
            time.sleep(0.5)
    assert json.loads(message.body) == {
        "id": task_id,
        "output": "seeded by the local stack\n65532\n",  # JOB_RUN_AS_USER, not root
        "exit": 0,
    }
    assert kubectl("-n", JOBS, "get", "job", task_id, check=False).returncode == 0
    assert kubectl("-n", "dispatcher", "get", "job", task_id, check=False).returncode != 0


def test_task_pods_are_fenced_off_by_the_network_policy(manifests: Path) -> None:
    """What the policy selects is what the dispatcher's Jobs carry; it admits no connection,
    and lets no task reach the cluster's private addresses (the broker, the dispatcher)."""
    documents = render(manifests / "base")
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    (settings_map,) = [
        d for d in documents if d["metadata"]["name"].startswith("dispatcher-settings")
    ]
    settings = Settings.from_env(settings_map["data"])
    task = parse_task(json.dumps({"id": "t-1", "image": "x/y:1", "volume_mount_path": "/w"}))
    pod_labels = build_job(task, ReplyRoute(), settings)["spec"]["template"]["metadata"]["labels"]

    assert policy["metadata"]["namespace"] == settings.job_namespace == JOBS
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["spec"]["ingress"] == []
    blocks = [
        p["ipBlock"] for rule in policy["spec"]["egress"] for p in rule["to"] if "ipBlock" in p
    ]
    excepted = [ipaddress.ip_network(net) for block in blocks for net in block.get("except", [])]
    for private in ("10.244.0.1", "10.96.0.1", "172.17.0.1", "192.168.1.1", "169.254.169.254"):
        assert any(ipaddress.ip_address(private) in net for net in excepted), private


def dispatcher_pods() -> list[dict[str, Any]]:
    out = kubectl(
        "-n", "dispatcher", "get", "pods", "-l", "app.kubernetes.io/name=dispatcher", "-o", "json"
    ).stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def http_get(pod: dict[str, Any], path: str) -> tuple[int, str]:
    url = f"http://{pod['status']['podIP']}:8000{path}"  # the pod bridge, on this machine
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def serving(pod: dict[str, Any]) -> bool:
    """The pod's health server answers /healthz (a pod just started may not listen yet)."""
    try:
        return http_get(pod, "/healthz")[0] == 200
    except urllib.error.URLError:
        return False


def test_readiness_waits_for_the_broker_and_the_watch(deployed: None) -> None:
    wait_ready()
    (ready_pod,) = dispatcher_pods()
    assert http_get(ready_pod, "/readyz") == (200, "ok\n")
    metrics = http_get(ready_pod, "/metrics")[1]
    assert "dispatcher_tasks_received_total" in metrics
    assert "dispatcher_watch_restarts_total" in metrics

    kubectl("-n", "dispatcher", "set", "env", "deployment/dispatcher", "AMQP_PORT=5999")
    try:
        deadline = time.monotonic() + 120
        while True:
            pods = [
                p
                for p in dispatcher_pods()
                if p["metadata"]["name"] != ready_pod["metadata"]["name"]
            ]
            if pods and pods[0]["status"].get("podIP") and serving(pods[0]):
                break
            assert time.monotonic() < deadline, "the new pod never served /healthz"
            time.sleep(1)
        time.sleep(12)  # several readiness periods
        (broken,) = [
            p for p in dispatcher_pods() if p["metadata"]["name"] == pods[0]["metadata"]["name"]
        ]
        conditions = {c["type"]: c["status"] for c in broken["status"]["conditions"]}
        assert conditions["Ready"] == "False"
        status, body = http_get(broken, "/readyz")
        assert status == 503
        assert "broker" in body
        assert "watch" not in body  # the watches do not depend on the broker
        assert ready_pod["metadata"]["name"] in [p["metadata"]["name"] for p in dispatcher_pods()]
    finally:
        kubectl("-n", "dispatcher", "set", "env", "deployment/dispatcher", "AMQP_PORT-")
    wait_ready()
