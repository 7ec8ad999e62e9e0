"""Settings from the environment: defaults, accepted values, one-line errors, documentation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dispatcher.config import SETTINGS_TABLE, Settings
from dispatcher.errors import ConfigError

SEED_DEFAULTS = {
    "AMQP_USER": "guest",
    "AMQP_PASSWORD": "guest",
    "AMQP_HOST": "rabbitmq.dispatcher.svc.cluster.local",
    "AMQP_PORT": "5672",
    "AMQP_VHOST": "/",
    "TASK_QUEUE_NAME": "tasks",
    "TASK_EXCHANGE_NAME": "tasks",
    "TASK_EXCHANGE_TYPE": "direct",
    "TASK_ROUTING_KEY": "task",
    "RESPONSE_QUEUE_NAME": "responses",
    "RESPONSE_EXCHANGE_NAME": "responses",
    "RESPONSE_EXCHANGE_TYPE": "direct",
    "RESPONSE_ROUTING_KEY": "response",
    "PV_NAME": "worker-pv-volume",
    "PVC_NAME": "worker-pv-claim",
    "INTERNAL_SERVICE_ACCOUNT_NAME": "job-internal",
    "K8S_IN_CLUSTER": "true",
}
ADDED_DEFAULTS = {
    "JOB_NAMESPACE": "dispatcher",
    "DISPATCHER_NAME": "dispatcher",
    "KUBECONFIG": "",
    "TASK_ACK_MODE": "confirmed",
    "TASK_PREFETCH": "16",
    "QUEUE_TYPE": "quorum",
    "MAX_DELIVERIES": "10",
    "CONTROL_QUEUE_NAME": "tasks.control",
    "CONTROL_ROUTING_KEY": "control",
    "CANCEL_TOMBSTONE_SECONDS": "86400",
    "MAX_TASK_BYTES": "65536",
    "MAX_OUTPUT_BYTES": "1048576",
    "IMAGE_PULL_GRACE_SECONDS": "60",
    "QUEUE_TIMEOUT_SECONDS": "86400",
    "IDEMPOTENCY_WINDOW_SECONDS": "300",
    "MAX_ACTIVE_JOBS": "100",
    "JOB_MAX_RUN_SECONDS": "3600",
    "JOB_TTL_SECONDS": "604800",
    "TASK_MAX_ENV_VARS": "64",
    "TASK_MAX_ENV_BYTES": "32768",
    "TASK_MAX_CPU": "2",
    "TASK_MAX_MEMORY": "4Gi",
    "TASK_MAX_RETRIES": "5",
    "PROGRESS_EXCHANGE_NAME": "",
    "JOB_IMAGE_PULL_POLICY": "IfNotPresent",
    "ALLOWED_IMAGE_PREFIXES": "",
    "JOB_CPU_REQUEST": "100m",
    "JOB_MEMORY_REQUEST": "64Mi",
    "JOB_CPU_LIMIT": "",
    "JOB_MEMORY_LIMIT": "",
    "JOB_RUN_AS_USER": "65532",
    "JOB_RUN_AS_GROUP": "65532",
    "JOB_ALLOW_ROOT": "false",
    "JOB_NODE_SELECTOR": "",
    "JOB_TOLERATIONS": "",
    "AMQP_TLS": "false",
    "AMQP_CA_FILE": "",
    "AMQP_CERT_FILE": "",
    "AMQP_KEY_FILE": "",
    "AMQP_SERVER_NAME": "",
    "REPLY_TO_PREFIXES": "amq.gen-,amq.rabbitmq.reply-to",
    "INTERNAL_SIGNING_KEY": "",
    "KUEUE_LOCAL_QUEUE": "",
    "KUEUE_PRIORITY_CLASS": "",
    "CELERY_QUEUE_NAME": "dispatcher.internal",
    "WATCH_TIMEOUT_SECONDS": "240",
    "WORKER_CONCURRENCY": "16",
    "HEALTH_PORT": "8000",
    "STATUS_PORT": "8001",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
}


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.amqp_host == "rabbitmq.dispatcher.svc.cluster.local"
    assert settings.amqp_port == 5672
    assert settings.k8s_in_cluster is True
    assert settings.kubeconfig is None
    assert settings.allowed_image_prefixes == ()
    assert settings.task_ack_mode == "confirmed"


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        pytest.param({"AMQP_PORT": "5673"}, "amqp_port", 5673, id="integer"),
        pytest.param({"AMQP_PORT": " 5673 "}, "amqp_port", 5673, id="integer-with-blanks"),
        pytest.param({"HEALTH_PORT": "0"}, "health_port", 0, id="health-server-disabled"),
        pytest.param({"STATUS_PORT": "0"}, "status_port", 0, id="status-page-disabled"),
        pytest.param(
            {"STATUS_PORT": "8000", "HEALTH_PORT": "0"}, "status_port", 8000, id="status-port"
        ),
        pytest.param({"K8S_IN_CLUSTER": "false"}, "k8s_in_cluster", False, id="false"),
        pytest.param({"K8S_IN_CLUSTER": "No"}, "k8s_in_cluster", False, id="no-any-case"),
        pytest.param({"K8S_IN_CLUSTER": "0"}, "k8s_in_cluster", False, id="zero"),
        pytest.param({"K8S_IN_CLUSTER": "YES"}, "k8s_in_cluster", True, id="yes-any-case"),
        pytest.param({"K8S_IN_CLUSTER": "1"}, "k8s_in_cluster", True, id="one"),
        pytest.param(
            {"KUBECONFIG": "/home/u/.kube/config"},
            "kubeconfig",
            "/home/u/.kube/config",
            id="kubeconfig",
        ),
        pytest.param({"KUBECONFIG": ""}, "kubeconfig", None, id="empty-kubeconfig-is-default"),
        pytest.param(
            {"TASK_EXCHANGE_TYPE": "Topic"},
            "task_exchange_type",
            "topic",
            id="exchange-type-any-case",
        ),
        pytest.param(
            {"JOB_IMAGE_PULL_POLICY": "always"},
            "job_image_pull_policy",
            "Always",
            id="pull-policy-canonical-spelling",
        ),
        pytest.param({"LOG_LEVEL": "debug"}, "log_level", "DEBUG", id="log-level-any-case"),
        pytest.param(
            {"TASK_ACK_MODE": "immediate"}, "task_ack_mode", "immediate", id="ack-immediate"
        ),
        pytest.param(
            {"ALLOWED_IMAGE_PREFIXES": " localhost/ , ,docker.io/library/,"},
            "allowed_image_prefixes",
            ("localhost/", "docker.io/library/"),
            id="prefixes-blanks-stripped",
        ),
        pytest.param({"JOB_CPU_REQUEST": ""}, "job_cpu_request", "", id="request-unset"),
        pytest.param(
            {"JOB_MEMORY_LIMIT": "1.5Gi"}, "job_memory_limit", "1.5Gi", id="fractional-quantity"
        ),
        pytest.param({"TASK_ROUTING_KEY": ""}, "task_routing_key", "", id="empty-routing-key"),
        pytest.param(
            {"AMQP_PASSWORD": "p@ss:w/rd"},
            "amqp_password",
            "p@ss:w/rd",
            id="password-any-printable",
        ),
    ],
)
def test_accepted_values(env: dict[str, str], field: str, expected: Any) -> None:
    assert getattr(Settings.from_env(env), field) == expected


@pytest.mark.parametrize(
    ("env", "error"),
    [
        pytest.param(
            {"AMQP_PORT": "abc"},
            "AMQP_PORT: must be a whole number from 1 to 65535, got 'abc'",
            id="not-int",
        ),
        pytest.param(
            {"AMQP_PORT": "0"},
            "AMQP_PORT: must be a whole number from 1 to 65535, got '0'",
            id="too-small",
        ),
        pytest.param(
            {"AMQP_PORT": "1.5"},
            "AMQP_PORT: must be a whole number from 1 to 65535, got '1.5'",
            id="not-whole",
        ),
        pytest.param(
            {"TASK_PREFETCH": "1001"},
            "TASK_PREFETCH: must be a whole number from 1 to 1000, got '1001'",
            id="too-big",
        ),
        pytest.param(
            {"MAX_TASK_BYTES": "9" * 30},
            f"MAX_TASK_BYTES: must be a whole number from 256 to 16777216, got '{'9' * 30}'",
            id="huge-number",
        ),
        pytest.param(
            {"K8S_IN_CLUSTER": "maybe"},
            "K8S_IN_CLUSTER: must be one of true, false, 1, 0, yes, no, got 'maybe'",
            id="not-bool",
        ),
        pytest.param(
            {"AMQP_HOST": "mq-0,,mq-1"},
            "AMQP_HOST: must be host[:port] or a comma-separated list of them, got 'mq-0,,mq-1'",
            id="hosts-empty-item",
        ),
        pytest.param(
            {"AMQP_HOST": "mq-0,mq-1:99999"},
            "AMQP_HOST: the port of 'mq-1:99999' must be a whole number from 1 to 65535",
            id="hosts-bad-port",
        ),
        pytest.param(
            {"AMQP_HOST": "mq-0,mq-1", "AMQP_TLS": "true"},
            "AMQP_SERVER_NAME: must be set when AMQP_TLS is true and AMQP_HOST names several "
            "nodes: it is the name every node's certificate is checked against",
            id="tls-several-nodes-without-name",
        ),
        pytest.param(
            {"QUEUE_TYPE": "stream"},
            "QUEUE_TYPE: must be one of quorum, classic, got 'stream'",
            id="queue-type",
        ),
        pytest.param(
            {"CONTROL_QUEUE_NAME": "tasks"},
            "CONTROL_QUEUE_NAME: must differ from TASK_QUEUE_NAME, got 'tasks'",
            id="control-queue-is-the-task-queue",
        ),
        pytest.param(
            {"STATUS_PORT": "8000"},
            "STATUS_PORT: must differ from HEALTH_PORT, got 8000",
            id="status-page-on-the-health-port",
        ),
        pytest.param(
            {"CONTROL_ROUTING_KEY": "task"},
            "CONTROL_ROUTING_KEY: must differ from TASK_ROUTING_KEY, got 'task'",
            id="control-key-is-the-task-key",
        ),
        pytest.param(
            {"MAX_DELIVERIES": "1"},
            "MAX_DELIVERIES: must be a whole number from 2 to 1000, got '1'",
            id="max-deliveries",
        ),
        pytest.param(
            {"TASK_EXCHANGE_TYPE": "x-delayed"},
            "TASK_EXCHANGE_TYPE: must be one of direct, topic, fanout, headers, got 'x-delayed'",
            id="exchange-type",
        ),
        pytest.param(
            {"ALLOWED_IMAGE_PREFIXES": "registry.example.com"},
            "ALLOWED_IMAGE_PREFIXES: each prefix must end with '/', got 'registry.example.com'",
            id="prefix-without-boundary",
        ),
        pytest.param(
            {"KUEUE_LOCAL_QUEUE": "Team_A"},
            "KUEUE_LOCAL_QUEUE: must be a Kubernetes object name (RFC 1123 subdomain): at most "
            "253 lower-case letters, digits, '-' or '.', starting and ending with a letter or "
            "digit, got 'Team_A'",
            id="local-queue-not-a-name",
        ),
        pytest.param(
            {"KUEUE_LOCAL_QUEUE": "q" * 64},
            "KUEUE_LOCAL_QUEUE: must be at most 63 characters (it is a label value), got "
            f"'{'q' * 64}'",
            id="local-queue-too-long-for-a-label",
        ),
        pytest.param(
            {"KUEUE_PRIORITY_CLASS": "high"},
            "KUEUE_PRIORITY_CLASS: is set but KUEUE_LOCAL_QUEUE is not",
            id="priority-without-queue",
        ),
        pytest.param(
            {"REPLY_TO_PREFIXES": "amq.gen-,bad prefix"},
            "REPLY_TO_PREFIXES: must be comma-separated queue name prefixes, got 'bad prefix'",
            id="reply-prefix-with-space",
        ),
        pytest.param(
            {"IMAGE_PULL_GRACE_SECONDS": "1801"},
            "IMAGE_PULL_GRACE_SECONDS: must be a whole number from 0 to 900, got '1801'",
            id="grace-beyond-consumer-timeout",
        ),
        pytest.param(
            {"TASK_ACK_MODE": "later"},
            "TASK_ACK_MODE: must be one of confirmed, immediate, got 'later'",
            id="ack-mode",
        ),
        pytest.param(
            {"LOG_FORMAT": "xml"},
            "LOG_FORMAT: must be one of text, json, got 'xml'",
            id="log-format",
        ),
        pytest.param(
            {"TASK_QUEUE_NAME": ""},
            "TASK_QUEUE_NAME: must be 1 to 255 bytes of printable text, got ''",
            id="empty-queue",
        ),
        pytest.param(
            {"RESPONSE_EXCHANGE_NAME": "x" * 256},
            "RESPONSE_EXCHANGE_NAME: must be 1 to 255 bytes of printable text, "
            f"got '{'x' * 80}...'",
            id="long-exchange-shown-shortened",
        ),
        pytest.param(
            {"CELERY_QUEUE_NAME": "a\nb"},
            "CELERY_QUEUE_NAME: must be 1 to 255 bytes of printable text, got 'a?b'",
            id="control-char-shown-as-question-mark",
        ),
        pytest.param(
            {"JOB_NAMESPACE": "Prod"},
            "JOB_NAMESPACE: must be an RFC 1123 label: 1 to 63 lower-case letters, "
            "digits or '-', starting and ending with a letter or digit, got 'Prod'",
            id="namespace",
        ),
        pytest.param(
            {"DISPATCHER_NAME": "d" * 64},
            "DISPATCHER_NAME: must be an RFC 1123 label: 1 to 63 lower-case letters, "
            f"digits or '-', starting and ending with a letter or digit, got '{'d' * 64}'",
            id="dispatcher-name-too-long",
        ),
        pytest.param(
            {"PVC_NAME": "claim_1"},
            "PVC_NAME: must be a Kubernetes object name (RFC 1123 subdomain): at most "
            "253 lower-case letters, digits, '-' or '.', starting and ending with a "
            "letter or digit, got 'claim_1'",
            id="pvc-name",
        ),
        pytest.param(
            {"AMQP_HOST": "user@host"},
            "AMQP_HOST: must be a host name or IP address, got 'user@host'",
            id="host",
        ),
        pytest.param(
            {"JOB_IMAGE_PULL_POLICY": "Sometimes"},
            "JOB_IMAGE_PULL_POLICY: must be one of IfNotPresent, Always, Never, got 'Sometimes'",
            id="pull-policy",
        ),
        pytest.param(
            {"JOB_CPU_REQUEST": "1 cpu"},
            "JOB_CPU_REQUEST: must be a Kubernetes quantity such as 100m, 0.5, 64Mi or "
            "1Gi (or empty for none), got '1 cpu'",
            id="quantity",
        ),
        pytest.param(
            {"JOB_MEMORY_REQUEST": "1Gi", "JOB_MEMORY_LIMIT": "512Mi"},
            "JOB_MEMORY_LIMIT: must not be less than JOB_MEMORY_REQUEST (1Gi), got '512Mi'",
            id="limit-below-request",
        ),
        pytest.param(
            {"JOB_CPU_REQUEST": "2", "JOB_CPU_LIMIT": "1500m"},
            "JOB_CPU_LIMIT: must not be less than JOB_CPU_REQUEST (2), got '1500m'",
            id="cpu-limit-below-request-mixed-units",
        ),
        pytest.param(
            {"AMQP_TLS": "true", "AMQP_CERT_FILE": "/c.crt"},
            "AMQP_KEY_FILE: must be set too when AMQP_CERT_FILE is set",
            id="tls-cert-without-key",
        ),
        pytest.param(
            {"AMQP_CA_FILE": "/ca.crt"},
            "AMQP_CA_FILE: is set but AMQP_TLS is not true (no TLS is used)",
            id="tls-file-without-tls",
        ),
        pytest.param(
            {"AMQP_TLS": "true", "AMQP_SERVER_NAME": "bad name"},
            "AMQP_SERVER_NAME: must be a host name or IP address, got 'bad name'",
            id="tls-server-name",
        ),
        pytest.param(
            {"IDEMPOTENCY_WINDOW_SECONDS": "-1"},
            "IDEMPOTENCY_WINDOW_SECONDS: must be a whole number from 0 to 86400, got '-1'",
            id="negative-window",
        ),
    ],
)
def test_bad_value_stops_with_one_line_naming_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert str(caught.value) == error
    assert "\n" not in str(caught.value)


def test_limit_equal_to_request_in_other_units_is_accepted() -> None:
    settings = Settings.from_env({"JOB_MEMORY_REQUEST": "1Gi", "JOB_MEMORY_LIMIT": "1024Mi"})

    assert settings.job_memory_limit == "1024Mi"


def test_first_bad_variable_in_documented_order_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LOG_FORMAT": "xml", "AMQP_PORT": "abc"})

    assert caught.value.variable == "AMQP_PORT"


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("", id="empty"),
        pytest.param("s3cret\n", id="control-character"),
    ],
)
def test_bad_password_is_never_echoed(password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AMQP_PASSWORD": password})

    assert (
        str(caught.value)
        == "AMQP_PASSWORD: must be non-empty printable text (the value is not shown)"
    )


def test_repr_hides_the_password() -> None:
    settings = Settings.from_env({"AMQP_PASSWORD": "hunter2"})

    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        pytest.param(
            {},
            "amqp://guest:guest@rabbitmq.dispatcher.svc.cluster.local:5672/%2F",
            id="defaults-root-vhost-quoted",
        ),
        pytest.param(
            {
                "AMQP_USER": "us@r",
                "AMQP_PASSWORD": "p:a/ss%",
                "AMQP_HOST": "mq",
                "AMQP_PORT": "5671",
                "AMQP_VHOST": "team/a b",
            },
            "amqp://us%40r:p%3Aa%2Fss%25@mq:5671/team%2Fa%20b",
            id="user-password-vhost-percent-quoted",
        ),
        pytest.param(
            {"AMQP_HOST": "fd00::1"},
            "amqp://guest:guest@[fd00::1]:5672/%2F",
            id="ipv6-host-bracketed",
        ),
        pytest.param(
            {"AMQP_HOST": "mq-0, mq-1:5682,[fd00::2]:5692", "AMQP_PORT": "5673"},
            "amqp://guest:guest@mq-0:5673/%2F;amqp://guest:guest@mq-1:5682/%2F;"
            "amqp://guest:guest@[fd00::2]:5692/%2F",
            id="several-nodes-in-turn",
        ),
    ],
)
def test_broker_url(env: dict[str, str], url: str) -> None:
    assert Settings.from_env(env).broker_url == url


def test_settings_table_lists_the_seed_variables_first_then_the_additions() -> None:
    shown = {row.env: row.default for row in SETTINGS_TABLE}

    assert [row.env for row in SETTINGS_TABLE[: len(SEED_DEFAULTS)]] == list(SEED_DEFAULTS)
    assert shown == SEED_DEFAULTS | ADDED_DEFAULTS


def test_settings_table_documents_every_field() -> None:
    assert len(SETTINGS_TABLE) == len(dataclasses.fields(Settings))
    assert all(row.description for row in SETTINGS_TABLE)


def test_documented_defaults_parse_to_the_defaults() -> None:
    env = {row.env: row.default for row in SETTINGS_TABLE}

    assert Settings.from_env(env) == Settings()


def test_node_selector_and_tolerations_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "JOB_NODE_SELECTOR": "type=kwok, pool=batch",
            "JOB_TOLERATIONS": "kwok.x-k8s.io/node=fake:NoSchedule,dedicated:NoExecute",
        }
    )

    assert settings.job_node_selector == (("type", "kwok"), ("pool", "batch"))
    assert settings.job_tolerations == (
        ("kwok.x-k8s.io/node", "fake", "NoSchedule"),
        ("dedicated", None, "NoExecute"),
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"JOB_NODE_SELECTOR": "type"}, "JOB_NODE_SELECTOR: each node selector entry must be"),
        ({"JOB_NODE_SELECTOR": "a=b c"}, "JOB_NODE_SELECTOR: 'b c' is not a label value"),
        ({"JOB_TOLERATIONS": "a=b:Sometimes"}, "JOB_TOLERATIONS: each toleration must be"),
        ({"JOB_TOLERATIONS": "a b:NoSchedule"}, "JOB_TOLERATIONS: 'a b' is not a taint key"),
    ],
)
def test_bad_placement_settings_name_the_variable(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert str(caught.value).startswith(line)
