"""The Helm chart (charts/k8s-job-dispatcher): its rendering is the kustomize base, its schema
refuses a wrong value by name, the API server accepts what it renders, and on the local stack a
release answers tasks, upgrades with tasks in flight losing none, and uninstalls leaving nothing.

The release runs in namespaces of its own (`chart-…`), as a broker user of its own with queues of
its own: the kustomize tests (test_manifests.py) and the host workers of the other suites use
`dispatcher`, `dispatcher-jobs` and the default queue names.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.monitoring import DASHBOARD, RULES, RULES_JOB, promtool
from harness.stack import (
    LOCAL,
    REPO,
    Broker,
    Instance,
    ResponseCollector,
    kubectl,
    rabbitmqctl,
    stack_env,
)

from dispatcher.amqp import permissions as amqp_permissions
from dispatcher.config import Settings

CHART = REPO / "charts" / "k8s-job-dispatcher"
LOCAL_VALUES = REPO / "tests" / "deploy" / "local-values.yaml"
RELEASE = "k8s-job-dispatcher"  # the release name of the deploy guide
IMAGE = "localhost/k8s-job-dispatcher"
SECOND_TAG = "chart-upgrade"  # the same image under another tag, for `helm upgrade`
FINALIZER = "job-dispatcher.io/answer"
RELEASE_STATES = ("--deployed", "--failed", "--pending", "--uninstalling", "--superseded")


def helm(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "stack" / "helm.sh"), *args],
        env={**os.environ, "KUBECONFIG": str(LOCAL / "kubeconfig")},
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def template(*args: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


EXTERNAL = ("--set", "broker.hosts={rabbitmq.example.com}", "--set", "broker.auth.existingSecret=s")


# --- the chart alone ------------------------------------------------------------------------


def test_the_committed_kustomize_base_is_the_charts_rendering() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_base.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_charts_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(["--values", str(CHART / "ci" / "base-values.yaml")], id="base"),
        pytest.param(
            ["--values", str(LOCAL_VALUES), "--set", "broker.auth.password=x"], id="local"
        ),
    ],
)
def test_helm_lint_passes(values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--set", "replicas=two"], "at '/replicas': got string, want integer", id="type"
        ),
        pytest.param(
            ["--set", "replica=2"], "additional properties 'replica' not allowed", id="key"
        ),
        pytest.param(
            ["--set", "broker.tsl.enabled=true"],
            "at '/broker': additional properties 'tsl' not allowed",
            id="nested-key",
        ),
        pytest.param(["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'", id="enum"),
        pytest.param(
            ["--set", "settings.JOB_NAMESPACE=elsewhere"],
            "settings.JOB_NAMESPACE: the chart sets it from its values",
            id="derived-setting",
        ),
        pytest.param(
            ["--set", "metrics.prometheusRule.thresholds.queueDepth=5"],
            "at '/metrics/prometheusRule/thresholds': additional properties 'queueDepth' not",
            id="threshold-name",
        ),
        pytest.param(
            ["--set", "metrics.prometheusRule.thresholds.taskQueueFor=15 minutes"],
            "at '/metrics/prometheusRule/thresholds/taskQueueFor'",
            id="threshold-duration",
        ),
        pytest.param(
            ["--set", "namespaces.podSecurity.version=1.35"],
            "at '/namespaces/podSecurity/version'",
            id="pod-security-version",
        ),
    ],
)
def test_helm_install_refuses_a_wrong_value_naming_it(args: list[str], message: str) -> None:
    result = helm("install", RELEASE, str(CHART), "--dry-run=client", *EXTERNAL, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_without_a_broker_the_chart_says_what_to_give() -> None:
    result = helm("template", RELEASE, str(CHART), check=False)
    assert result.returncode != 0
    assert "broker.hosts: give the broker's nodes" in result.stderr


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def test_the_image_digest_wins_over_the_tag_and_the_tag_defaults_to_app_version() -> None:
    digest = "sha256:" + "a" * 64
    (default,) = by_kind(template(*EXTERNAL), "Deployment")
    (pinned,) = by_kind(
        template(*EXTERNAL, "--set", "image.tag=9.9", "--set", f"image.digest={digest}"),
        "Deployment",
    )
    image = default["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/k8s-job-dispatcher/k8s-job-dispatcher:0.1.0"
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"ghcr.io/k8s-job-dispatcher/k8s-job-dispatcher@{digest}"
    )


def test_settings_are_rendered_as_the_worker_reads_them() -> None:
    documents = template(
        *EXTERNAL,
        "--set",
        "settings.MAX_OUTPUT_BYTES=1048576",
        "--set",
        "settings.JOB_ALLOW_ROOT=false",
        "--set",
        "broker.hosts={a:5672,b:5682}",
        "--set",
        "broker.tls.enabled=true",
        "--set",
        "broker.tls.secretName=amqp-tls",
        "--set",
        "broker.tls.certKey=tls.crt",
        "--set",
        "broker.tls.keyKey=tls.key",
        "--set",
        "broker.tls.serverName=rabbitmq.example.com",
    )
    (config_map,) = [
        d for d in by_kind(documents, "ConfigMap") if "settings" in d["metadata"]["name"]
    ]
    (deployment,) = by_kind(documents, "Deployment")
    data = config_map["data"]
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]

    settings = Settings.from_env(data)  # the worker's own check
    assert data["MAX_OUTPUT_BYTES"] == "1048576"  # not 1.048576e+06
    assert (settings.max_output_bytes, settings.job_allow_root) == (1048576, False)
    assert data["AMQP_HOST"] == "a:5672,b:5682"
    assert data["AMQP_PORT"] == "5671"  # TLS's port when none is given
    assert (data["AMQP_CA_FILE"], data["AMQP_KEY_FILE"]) == (
        "/etc/dispatcher/amqp-tls/ca.crt",
        "/etc/dispatcher/amqp-tls/tls.key",
    )
    assert {"name": "amqp-tls", "mountPath": "/etc/dispatcher/amqp-tls", "readOnly": True} in mounts


def test_a_settings_change_rolls_the_pods() -> None:
    def checksum(*args: str) -> str:
        (deployment,) = by_kind(template(*EXTERNAL, *args), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "settings.MAX_ACTIVE_JOBS=5")


@pytest.mark.parametrize(
    ("args", "kinds"),
    [
        pytest.param([], [], id="defaults"),
        pytest.param(["--set", "replicas=2"], ["PodDisruptionBudget"], id="two-replicas"),
        pytest.param(
            ["--set", "replicas=2", "--set", "podDisruptionBudget.enabled=false"], [], id="pdb-off"
        ),
        pytest.param(
            ["--set", "metrics.serviceMonitor.enabled=true"],
            ["Service", "ServiceMonitor"],
            id="service-monitor",
        ),
        pytest.param(
            ["--set", "metrics.prometheusRule.enabled=true"],
            ["PrometheusRule", "Service"],
            id="prometheus-rule",
        ),
        pytest.param(
            ["--set", "rabbitmq.bundled=true"], ["Service", "Service", "StatefulSet"], id="broker"
        ),
    ],
)
def test_optional_objects_follow_their_toggles(args: list[str], kinds: list[str]) -> None:
    always = {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment"}
    always |= {"PersistentVolumeClaim", "NetworkPolicy", "Job"}  # Job: the pre-delete hook
    documents = template(*EXTERNAL, *args)
    optional = sorted(d["kind"] for d in documents if d["kind"] not in always)
    assert optional == kinds


def prometheus_rule(*args: str) -> dict[str, Any]:
    (rule,) = by_kind(
        template(*EXTERNAL, "--set", "metrics.prometheusRule.enabled=true", *args), "PrometheusRule"
    )
    return rule


def test_the_prometheus_rule_is_the_rules_file_as_it_is_by_default() -> None:
    rule = prometheus_rule()

    assert rule["spec"] == yaml.safe_load(RULES.read_text())  # the job is dispatcher-metrics


def test_the_prometheus_rule_takes_the_releases_job_thresholds_and_rules(tmp_path: Path) -> None:
    own = {"alert": "BatchTeamOwnAlert", "expr": "vector(1)", "labels": {"team": "batch"}}
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "name": "batch",
                "metrics": {
                    "prometheusRule": {
                        "thresholds": {"taskQueueMessages": 500, "taskQueueFor": "1h"},
                        "rules": [own],
                    }
                },
            }
        )
    )
    expected = yaml.safe_load(
        RULES.read_text()
        .replace(f'job="{RULES_JOB}"', 'job="batch-metrics"')
        .replace("> 100  # threshold: taskQueueMessages", "> 500  # threshold: taskQueueMessages")
        .replace("for: 15m  # threshold: taskQueueFor", "for: 1h")
        .replace("> 0.1  # threshold: answerErrorRatio", "> 0.25  # threshold: answerErrorRatio")
    )
    expected["groups"][0]["rules"].append(own)

    rule = prometheus_rule(
        "--values", str(values), "--set", "metrics.prometheusRule.thresholds.answerErrorRatio=0.25"
    )
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))

    assert rule["spec"] == expected
    checked = promtool("check", "rules", str(rendered))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert prometheus_rule("--set", "metrics.prometheusRule.job=kubernetes-pods")["spec"] == (
        yaml.safe_load(RULES.read_text().replace(f'job="{RULES_JOB}"', 'job="kubernetes-pods"'))
    )


def test_the_dashboard_is_a_config_map_for_grafanas_sidecar_when_asked_for() -> None:
    def dashboards(*args: str) -> list[dict[str, Any]]:
        documents = template(*EXTERNAL, *args)
        return [
            d
            for d in by_kind(documents, "ConfigMap")
            if d["metadata"]["name"].endswith("-dashboard")
        ]

    (config_map,) = dashboards(
        "--set", "metrics.dashboard.enabled=true",
        "--set", "metrics.dashboard.annotations.grafana_folder=Dispatcher",
        "--set", "metrics.dashboard.namespace=monitoring",
    )  # fmt: skip
    meta = config_map["metadata"]

    assert (meta["name"], meta["namespace"]) == ("dispatcher-dashboard", "monitoring")
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["annotations"] == {"grafana_folder": "Dispatcher"}
    assert json.loads(config_map["data"]["k8s-job-dispatcher.json"]) == json.loads(
        DASHBOARD.read_text()
    )
    assert dashboards() == []


# --- on the local stack ---------------------------------------------------------------------


@dataclass
class Release:
    instance: Instance
    namespace: str
    jobs: str
    volume: str
    values: Path


def release_values(instance: Instance, password: str) -> dict[str, Any]:
    env, names = stack_env(), instance.env()
    queues = ("TASK_QUEUE_NAME", "TASK_EXCHANGE_NAME", "CONTROL_QUEUE_NAME", "CELERY_QUEUE_NAME")
    queues += ("RESPONSE_QUEUE_NAME", "RESPONSE_EXCHANGE_NAME")
    return {
        "name": instance.name,
        "namespaces": {"dispatcher": instance.name, "jobs": f"{instance.name}-jobs"},
        "broker": {
            "hosts": env["POD_AMQP_HOST"].split(","),
            "auth": {"user": instance.name, "password": password},
        },
        "persistence": {"volumeName": f"{instance.name}-pv"},
        "settings": {
            **{key: names[key] for key in queues},
            "MAX_ACTIVE_JOBS": 20,
            "JOB_CPU_REQUEST": "10m",
            "LOG_FORMAT": "text",
            "IMAGE_PULL_GRACE_SECONDS": 20,
        },
    }


def broker_user(instance: Instance, password: str) -> None:
    """The release's own broker user, with what `dispatcher permissions` grants its names."""
    rabbitmqctl("add_user", instance.name, password)
    settings = Settings.from_env(instance.env())
    rabbitmqctl(*amqp_permissions.dispatcher(settings).rabbitmqctl(instance.name, "/"))


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    sock = "/run/dispatcher-stack/containerd/containerd.sock"
    return subprocess.run(
        ["ctr", "--address", sock, "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart's values for the local stack plus namespaces, queues and a broker user of the
    test's own; everything removed afterwards, whatever the tests left."""
    image = f"{IMAGE}:{app_version()}"
    if ctr("images", "ls", "-q").stdout.split().count(image) != 1:
        pytest.fail(f"{image} is not in the stack's containerd: run `make image`")
    instance = Instance(name="chart-" + uuid.uuid4().hex[:6])
    password = secrets.token_hex(16)
    values = tmp_path_factory.mktemp("chart") / "values.yaml"
    values.write_text(yaml.safe_dump(release_values(instance, password)))
    broker_user(instance, password)
    broker = Broker(instance)  # declares the task and response queues, as the worker does
    ctr("images", "tag", "--force", image, f"{IMAGE}:{SECOND_TAG}")
    try:
        yield Release(
            instance, instance.name, f"{instance.name}-jobs", f"{instance.name}-pv", values
        )
    finally:
        helm("uninstall", RELEASE, "-n", "default", "--timeout", "3m", check=False)
        for job in owned_jobs(instance.name, f"{instance.name}-jobs"):
            drop_finalizer(f"{instance.name}-jobs", job)
        kubectl(
            "delete",
            "namespace",
            instance.name,
            f"{instance.name}-jobs",
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
        kubectl("delete", "pv", f"{instance.name}-pv", "--ignore-not-found", check=False)
        ctr("images", "rm", f"{IMAGE}:{SECOND_TAG}", check=False)
        broker.close()
        rabbitmqctl("delete_user", instance.name)


def owned_jobs(name: str, namespace: str = "") -> list[dict[str, Any]]:
    """Jobs of the dispatcher `name` (DISPATCHER_NAME, the chart's `name`), in `namespace` or
    in any."""
    where = ["-n", namespace] if namespace else ["-A"]
    selector = f"app.kubernetes.io/managed-by=k8s-job-dispatcher,job-dispatcher.io/instance={name}"
    out = kubectl("get", "jobs", *where, "-l", selector, "-o", "json", check=False).stdout
    return list(json.loads(out or '{"items": []}')["items"])


def drop_finalizer(namespace: str, job: dict[str, Any]) -> None:
    """Only for the clean-up of a failed run: the uninstall hook does this itself."""
    kubectl(
        "-n", namespace, "patch", "job", job["metadata"]["name"], "--type=json",
        "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False,
    )  # fmt: skip


def names(*what: str) -> list[str]:
    return kubectl("get", *what, "--ignore-not-found", "-o", "name").stdout.split()


def sleeper(task_id: str, seconds: float) -> dict[str, Any]:
    return {
        "id": task_id,
        "image": stack_env()["TEST_IMAGE"],
        "volume_mount_path": "/work",
        "cmd": ["/bin/sh", "-c", f"sleep {seconds}; echo {task_id}"],
    }


@pytest.mark.cluster
def test_the_rendering_is_accepted_by_the_api_server(release: Release) -> None:
    """Everything the chart renders for the local stack, its uninstall hook and the dashboard's
    ConfigMap too, validated by a server-side dry run (the namespaces made for real first: a dry
    run refuses objects in a namespace that does not exist yet)."""
    documents = template(
        "--values", str(LOCAL_VALUES), "--values", str(release.values),
        "--set", "metrics.dashboard.enabled=true",  # (the stack has no Prometheus Operator CRDs)
    )  # fmt: skip
    namespaces = by_kind(documents, "Namespace")
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces))
    try:
        result = kubectl(
            "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(documents), check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("(server dry run)") == len(documents)
    finally:
        kubectl("delete", "namespace", release.namespace, release.jobs, "--wait=true", check=False)


def rolled_out(release: Release, image: str) -> bool:
    selector = f"app.kubernetes.io/name={release.instance.name}"
    out = kubectl("-n", release.namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    pods = [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]
    return len(pods) == 1 and pods[0]["spec"]["containers"][0]["image"] == image


@pytest.mark.cluster
def test_helm_install_runs_a_dispatcher_that_answers_a_task(release: Release) -> None:
    result = helm(
        "install", RELEASE, str(CHART), "-n", "default", "--values", str(LOCAL_VALUES),
        "--values", str(release.values), "--wait", "--timeout", "4m", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert rolled_out(release, f"{IMAGE}:{app_version()}")
    broker = Broker(release.instance)
    try:
        broker.publish(sleeper("chart-hello", 0), correlation_id="chart-hello")
        answer = broker.response(timeout=120)
    finally:
        broker.conn.release()
    assert answer == {"id": "chart-hello", "output": "chart-hello\n", "exit": 0}
    (job,) = [j for j in owned_jobs(release.instance.name, release.jobs)]
    assert job["metadata"]["name"] == "chart-hello"


@pytest.mark.cluster
def test_helm_upgrade_with_100_tasks_in_flight_loses_none_and_answers_each_once(
    release: Release,
) -> None:
    sent = [f"up-{i:03d}" for i in range(100)]
    broker = Broker(release.instance)
    collector = ResponseCollector(release.instance, time.monotonic())
    try:
        for task_id in sent:
            broker.publish(sleeper(task_id, 2), correlation_id=task_id)
        at_upgrade = len(collector.bodies)
        upgraded = helm(
            "upgrade", RELEASE, str(CHART), "-n", "default", "--reuse-values",
            "--set", f"image.tag={SECOND_TAG}", "--wait", "--timeout", "4m", check=False,
        )  # fmt: skip
        assert upgraded.returncode == 0, upgraded.stderr
        assert rolled_out(release, f"{IMAGE}:{SECOND_TAG}")
        after_upgrade = len(collector.bodies)
        collector.wait(len(sent), timeout=420)
        time.sleep(10)  # a duplicate would come now
    finally:
        collector.stop()
        broker.conn.release()
    answers = Counter(body["id"] for _, body in collector.bodies)
    ok = sum(1 for _, body in collector.bodies if body.get("exit") == 0 and "error" not in body)
    lost = [task_id for task_id in sent if task_id not in answers]
    duplicates = sum(count - 1 for count in answers.values())
    print(
        f"\nhelm upgrade with tasks in flight: sent {len(sent)}, answered {len(answers)} "
        f"(exit 0: {ok}), lost {len(lost)}, duplicates {duplicates}, "
        f"all answered {collector.bodies[-1][0]:.0f} s after the first was sent; answered when "
        f"the upgrade began: {at_upgrade}, when the new pod had taken over: {after_upgrade}"
    )
    assert (len(lost), duplicates, set(answers)) == (0, 0, set(sent))
    assert ok == len(sent)


@pytest.mark.cluster
def test_helm_uninstall_leaves_nothing_even_with_tasks_running(release: Release) -> None:
    broker = Broker(release.instance)
    running = [f"long-{i}" for i in range(3)]
    for task_id in running:
        broker.publish(sleeper(task_id, 600), correlation_id=task_id)
    deadline = time.monotonic() + 120
    while (
        len(
            [
                j
                for j in owned_jobs(release.instance.name, release.jobs)
                if j["metadata"]["name"] in running
            ]
        )
        < 3
    ):
        assert time.monotonic() < deadline, "the long tasks' Jobs were not created"
        time.sleep(1)
    held = [
        j
        for j in owned_jobs(release.instance.name, release.jobs)
        if FINALIZER in j["metadata"].get("finalizers", [])
    ]

    started = time.monotonic()
    result = helm("uninstall", RELEASE, "-n", "default", "--wait", "--timeout", "5m", check=False)
    uninstall_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    gone_s = None
    while time.monotonic() - started < 180:
        out = kubectl(
            "get", "namespace", release.namespace, release.jobs, "--ignore-not-found", "-o", "name"
        ).stdout
        if not out.strip():
            gone_s = time.monotonic() - started
            break
        time.sleep(1)
    leftovers = {
        "Jobs of the dispatcher, any namespace": [
            j["metadata"]["name"] for j in owned_jobs(release.instance.name)
        ],
        "namespaces": names("namespace", release.namespace, release.jobs),
        "PersistentVolume": names("pv", release.volume),
        "cluster-wide objects of the release": names(
            "clusterroles,clusterrolebindings,pv", "-l", f"app.kubernetes.io/instance={RELEASE}"
        ),
        "helm release": [
            f"{r['name']} in {r['namespace']}: revision {r['revision']} {r['status']}"
            for r in json.loads(helm("list", "-A", "-o", "json", *RELEASE_STATES).stdout)
            if r["name"] == RELEASE
        ],
    }
    late = broker.no_more_responses(2)
    broker.conn.release()
    print(
        f"\nhelm uninstall with {len(held)} Jobs running (finalizer {FINALIZER}): returned in "
        f"{uninstall_s:.0f} s, both namespaces gone {gone_s and round(gone_s)} s after it began; "
        f"answers to the running tasks: {len(late)} (stopped unanswered, as documented); "
        f"left: {json.dumps(leftovers)}"
    )
    assert len(held) == 3
    assert gone_s is not None, leftovers
    assert not any(leftovers.values()), leftovers
    assert re.search(r"uninstalled", result.stdout)
