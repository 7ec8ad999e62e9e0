"""Settings from the environment, parsed once at start-up.

:meth:`Settings.from_env` returns a complete, valid :class:`Settings` or raises
:class:`~dispatcher.errors.ConfigError` naming the first bad variable in one line, for example
``AMQP_PORT: must be a whole number from 1 to 65535, got 'abc'``. The value of
a secret setting (``AMQP_PASSWORD``, ``INTERNAL_SIGNING_KEY``) never appears in an error or in
``repr(settings)``.

Each setting is declared once, as a dataclass field that carries its environment variable, its
parser (from :mod:`dispatcher.parsers`) and its description; :data:`SETTINGS_TABLE` (the
documentation of all settings) is derived from those fields, so defaults cannot drift between
code and docs.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

from dispatcher import parsers
from dispatcher.errors import ConfigError

_T = TypeVar("_T")
_META: Final = "dispatcher.setting"

_EXCHANGE_TYPES: Final = ("direct", "topic", "fanout", "headers")


@dataclass(frozen=True)
class _Variable:
    env: str
    parse: parsers.Parser
    description: str


def _setting(
    env: str, default: _T, parse: parsers.Parser, description: str, *, secret: bool = False
) -> _T:
    """Declare a setting: its field default, variable, parser and documentation in one place."""
    metadata = {_META: _Variable(env, parse, description)}
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All settings of a dispatcher process; build it with :meth:`from_env`."""

    # The original contract's variables, defaults unchanged.
    amqp_user: str = _setting("AMQP_USER", "guest", parsers.text, "RabbitMQ user name.")
    amqp_password: str = _setting(
        "AMQP_PASSWORD", "guest", parsers.secret, "RabbitMQ password.", secret=True
    )
    amqp_host: str = _setting(
        "AMQP_HOST",
        "rabbitmq.dispatcher.svc.cluster.local",
        parsers.hosts,
        "RabbitMQ host name, or the nodes of a cluster as a comma-separated list of host[:port] "
        "(a port given here overrides AMQP_PORT): connections go to the first that answers.",
    )
    amqp_port: int = _setting("AMQP_PORT", 5672, parsers.integer(1, 65535), "RabbitMQ AMQP port.")
    amqp_vhost: str = _setting("AMQP_VHOST", "/", parsers.text, "RabbitMQ virtual host.")
    task_queue_name: str = _setting(
        "TASK_QUEUE_NAME",
        "tasks",
        parsers.amqp_name(allow_empty=False),
        "Queue the tasks are read from.",
    )
    task_exchange_name: str = _setting(
        "TASK_EXCHANGE_NAME",
        "tasks",
        parsers.amqp_name(allow_empty=False),
        "Exchange the task queue is bound to.",
    )
    task_exchange_type: Literal["direct", "topic", "fanout", "headers"] = _setting(
        "TASK_EXCHANGE_TYPE",
        "direct",
        parsers.choice(*_EXCHANGE_TYPES),
        "Type of the task exchange: direct, topic, fanout or headers.",
    )
    task_routing_key: str = _setting(
        "TASK_ROUTING_KEY",
        "task",
        parsers.amqp_name(allow_empty=True),
        "Routing key binding the task queue to the task exchange.",
    )
    response_queue_name: str = _setting(
        "RESPONSE_QUEUE_NAME",
        "responses",
        parsers.amqp_name(allow_empty=False),
        "Queue the responses are delivered to (declared and bound by the dispatcher).",
    )
    response_exchange_name: str = _setting(
        "RESPONSE_EXCHANGE_NAME",
        "responses",
        parsers.amqp_name(allow_empty=False),
        "Exchange the responses are published to.",
    )
    response_exchange_type: Literal["direct", "topic", "fanout", "headers"] = _setting(
        "RESPONSE_EXCHANGE_TYPE",
        "direct",
        parsers.choice(*_EXCHANGE_TYPES),
        "Type of the response exchange: direct, topic, fanout or headers.",
    )
    response_routing_key: str = _setting(
        "RESPONSE_ROUTING_KEY",
        "response",
        parsers.amqp_name(allow_empty=True),
        "Routing key the responses are published with.",
    )
    pv_name: str = _setting(
        "PV_NAME",
        "worker-pv-volume",
        parsers.dns_subdomain,
        "PersistentVolume behind PVC_NAME (created by the manifests; Jobs only mount the claim). "
        "The worker warns at start when PVC_NAME is missing, unbound, or bound to another.",
    )
    pvc_name: str = _setting(
        "PVC_NAME",
        "worker-pv-claim",
        parsers.dns_subdomain,
        "PersistentVolumeClaim mounted into every Job at the task's volume_mount_path.",
    )
    internal_service_account_name: str = _setting(
        "INTERNAL_SERVICE_ACCOUNT_NAME",
        "job-internal",
        parsers.dns_subdomain,
        "Service account the Job pods run as (its token is not mounted).",
    )
    k8s_in_cluster: bool = _setting(
        "K8S_IN_CLUSTER",
        True,
        parsers.boolean,
        "true: use the pod's service account; false: use a kubeconfig file.",
    )

    # Additions.
    job_namespace: str = _setting(
        "JOB_NAMESPACE", "dispatcher", parsers.dns_label, "Namespace the Jobs are created in."
    )
    dispatcher_name: str = _setting(
        "DISPATCHER_NAME",
        "dispatcher",
        parsers.dns_label,
        "Name of this installation; labels its Jobs so several can share a namespace.",
    )
    kubeconfig: str | None = _setting(
        "KUBECONFIG",
        None,
        parsers.optional_path,
        "Kubeconfig file, used only when K8S_IN_CLUSTER=false (empty: the client's default).",
    )
    task_ack_mode: Literal["confirmed", "immediate"] = _setting(
        "TASK_ACK_MODE",
        "confirmed",
        parsers.choice("confirmed", "immediate"),
        "confirmed: ack a task once it is durably handed on; immediate: ack on receipt.",
    )
    task_prefetch: int = _setting(
        "TASK_PREFETCH",
        16,
        parsers.integer(1, 1000),
        "Task messages a worker takes from the task queue ahead of handing them on; while "
        "MAX_ACTIVE_JOBS is reached it holds at most this many, unacknowledged, and the rest "
        "wait untouched in RabbitMQ.",
    )
    queue_type: Literal["quorum", "classic"] = _setting(
        "QUEUE_TYPE",
        "quorum",
        parsers.choice("quorum", "classic"),
        "RabbitMQ type of the task, control, internal and response queues: quorum (replicated, "
        "RabbitMQ 4's durable type) or classic. A queue that exists with another type stops "
        "start-up.",
    )
    max_deliveries: int = _setting(
        "MAX_DELIVERIES",
        10,
        parsers.integer(2, 1000),
        "A task message delivered this many times (a quorum queue counts them) is answered "
        "with an error instead of being handed on again; keep it below the queue's "
        "delivery-limit (RabbitMQ 4: 20 unless a policy sets it), which drops the message.",
    )
    control_queue_name: str = _setting(
        "CONTROL_QUEUE_NAME",
        "tasks.control",
        parsers.amqp_name(allow_empty=False),
        "Queue of cancel requests, read apart from the task queue so a cancel never waits "
        "behind a backlog of tasks.",
    )
    control_routing_key: str = _setting(
        "CONTROL_ROUTING_KEY",
        "control",
        parsers.amqp_name(allow_empty=False),
        "Routing key binding the control queue to the task exchange.",
    )
    cancel_tombstone_seconds: int = _setting(
        "CANCEL_TOMBSTONE_SECONDS",
        86400,
        parsers.integer(60, 2592000),
        "A task cancelled before it reached the cluster is answered 'cancelled' without "
        "running when it is read within this long of the cancel.",
    )
    max_task_bytes: int = _setting(
        "MAX_TASK_BYTES",
        65536,
        parsers.integer(256, 16777216),
        "Largest task message accepted, in bytes.",
    )
    max_output_bytes: int = _setting(
        "MAX_OUTPUT_BYTES",
        1048576,
        parsers.integer(1024, 67108864),
        "Most log bytes returned per task; the tail is kept and the cut is marked.",
    )
    image_pull_grace_seconds: int = _setting(
        "IMAGE_PULL_GRACE_SECONDS",
        60,
        parsers.integer(
            0, 900
        ),  # countdown tasks must stay well inside RabbitMQ's consumer_timeout
        "How long an image pull, container config or pod creation error, or a pod that no node "
        "can ever take, may last before the task is answered with an error.",
    )
    queue_timeout_seconds: int = _setting(
        "QUEUE_TIMEOUT_SECONDS",
        86400,
        parsers.integer(0, 2592000),
        "How long a task may wait for room in the cluster (a full node, a used-up quota) before "
        "it is answered with an error (0: no limit).",
    )
    max_active_jobs: int = _setting(
        "MAX_ACTIVE_JOBS",
        100,
        parsers.integer(0, 1000000),
        "Most Jobs of this installation running or waiting for room at once; beyond it new "
        "tasks wait in the task queue (0: no limit).",
    )
    job_max_run_seconds: int = _setting(
        "JOB_MAX_RUN_SECONDS",
        3600,
        parsers.integer(1, 604800),
        "Longest a task's pod may run (activeDeadlineSeconds).",
    )
    idempotency_window_seconds: int = _setting(
        "IDEMPOTENCY_WINDOW_SECONDS",
        300,
        parsers.integer(0, 86400),
        "After a task ran to its end and was answered, the same task sent again under its id "
        "within this long (counted from the Job's end) gets the same answer again without a "
        "second run, and a different task the conflict error; the finished Job is kept as "
        "long (0: deleted at once, the id is free again).",
    )
    job_ttl_seconds: int = _setting(
        "JOB_TTL_SECONDS",
        604800,
        parsers.integer(60, 31536000),
        "Finished Jobs are deleted by Kubernetes after this long if the dispatcher did not; keep "
        "it above the longest time no worker may run (a Job it deletes unanswered is still "
        "answered, but its pod and output are gone).",
    )
    task_max_env_vars: int = _setting(
        "TASK_MAX_ENV_VARS",
        64,
        parsers.integer(0, 1024),
        "Most environment variables a task may set with its env field (0: env not allowed).",
    )
    task_max_env_bytes: int = _setting(
        "TASK_MAX_ENV_BYTES",
        32768,
        parsers.integer(0, 1048576),
        "Most bytes of names and values a task's env may total.",
    )
    task_max_cpu: str = _setting(
        "TASK_MAX_CPU",
        "2",
        parsers.quantity,
        "Largest CPU request a task may ask for in resources.cpu (empty: no limit).",
    )
    task_max_memory: str = _setting(
        "TASK_MAX_MEMORY",
        "4Gi",
        parsers.quantity,
        "Largest memory request a task may ask for in resources.memory (empty: no limit).",
    )
    task_max_retries: int = _setting(
        "TASK_MAX_RETRIES",
        5,
        parsers.integer(0, 20),
        "Most times a task may ask to be run again after its container failed, with its "
        "retries field (0: retries not allowed).",
    )
    progress_exchange_name: str = _setting(
        "PROGRESS_EXCHANGE_NAME",
        "",
        parsers.amqp_name(allow_empty=True),
        "Topic exchange that gets one small JSON event per task state change (queued, running, "
        "succeeded, failed), routing key = the task id (empty: no events).",
    )
    job_image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = _setting(
        "JOB_IMAGE_PULL_POLICY",
        "IfNotPresent",
        parsers.choice("IfNotPresent", "Always", "Never"),
        "imagePullPolicy of the task container: IfNotPresent, Always or Never.",
    )
    allowed_image_prefixes: tuple[str, ...] = _setting(
        "ALLOWED_IMAGE_PREFIXES",
        (),
        parsers.prefixes,
        "Comma-separated prefixes a task image must start with, each ending in '/', e.g. "
        "'registry.example.com/team/'; empty: any image.",
    )
    job_cpu_request: str = _setting(
        "JOB_CPU_REQUEST",
        "100m",
        parsers.quantity,
        "CPU request of the task container (empty: none).",
    )
    job_memory_request: str = _setting(
        "JOB_MEMORY_REQUEST",
        "64Mi",
        parsers.quantity,
        "Memory request of the task container (empty: none).",
    )
    job_cpu_limit: str = _setting(
        "JOB_CPU_LIMIT", "", parsers.quantity, "CPU limit of the task container (empty: none)."
    )
    job_memory_limit: str = _setting(
        "JOB_MEMORY_LIMIT",
        "",
        parsers.quantity,
        "Memory limit of the task container (empty: none).",
    )
    job_run_as_user: int = _setting(
        "JOB_RUN_AS_USER",
        65532,
        parsers.integer(1, 2147483647),
        "UID the task container runs as (runAsNonRoot is set too: a task can never run as root "
        "unless JOB_ALLOW_ROOT).",
    )
    job_run_as_group: int = _setting(
        "JOB_RUN_AS_GROUP",
        65532,
        parsers.integer(1, 2147483647),
        "GID the task container runs as, and the group of the volume's files (fsGroup, where "
        "the volume supports it).",
    )
    job_allow_root: bool = _setting(
        "JOB_ALLOW_ROOT",
        False,
        parsers.boolean,
        "true: the task container runs as its image's user, root included (JOB_RUN_AS_USER and "
        "JOB_RUN_AS_GROUP are then not used).",
    )
    job_node_selector: tuple[tuple[str, str], ...] = _setting(
        "JOB_NODE_SELECTOR",
        (),
        parsers.node_selector,
        "Comma-separated key=value node labels the task pods must run on (empty: any node).",
    )
    job_tolerations: tuple[tuple[str, str | None, str], ...] = _setting(
        "JOB_TOLERATIONS",
        (),
        parsers.tolerations,
        "Comma-separated taints the task pods tolerate: key=value:Effect or key:Effect "
        "(empty: none), e.g. a node pool dedicated to tasks.",
    )
    amqp_tls: bool = _setting(
        "AMQP_TLS",
        False,
        parsers.boolean,
        "true: speak AMQP over TLS (amqps; usually AMQP_PORT=5671), verifying the broker's "
        "certificate and its name.",
    )
    amqp_ca_file: str | None = _setting(
        "AMQP_CA_FILE",
        None,
        parsers.optional_path,
        "With AMQP_TLS: the CA certificates (PEM) the broker's certificate must chain to "
        "(empty: the system's).",
    )
    amqp_cert_file: str | None = _setting(
        "AMQP_CERT_FILE",
        None,
        parsers.optional_path,
        "With AMQP_TLS: a client certificate (PEM) to present, with AMQP_KEY_FILE (empty: none).",
    )
    amqp_key_file: str | None = _setting(
        "AMQP_KEY_FILE",
        None,
        parsers.optional_path,
        "With AMQP_TLS: the client certificate's private key (PEM).",
    )
    amqp_server_name: str | None = _setting(
        "AMQP_SERVER_NAME",
        None,
        parsers.optional_host,
        "With AMQP_TLS: the name the broker's certificate must carry (empty: AMQP_HOST).",
    )
    reply_to_prefixes: tuple[str, ...] = _setting(
        "REPLY_TO_PREFIXES",
        ("amq.gen-", "amq.rabbitmq.reply-to"),
        parsers.queue_prefixes,
        "Comma-separated prefixes a task's reply_to queue must start with (default: the queues "
        "the broker names itself, amq.gen-*, and direct reply-to). A task whose reply_to is "
        "anything else is not run: its error response goes to the response exchange instead "
        "(empty: every reply_to is refused).",
    )
    internal_signing_key: tuple[str, ...] = _setting(
        "INTERNAL_SIGNING_KEY",
        (),
        parsers.signing_keys,
        "Key sealing the messages on the internal queue (the worker runs no internal message "
        "without a valid seal): at least 16 characters, the same for every replica; several, "
        "comma-separated, to rotate (the first seals, any verifies). Empty: derived from "
        "AMQP_PASSWORD.",
        secret=True,
    )
    kueue_local_queue: str = _setting(
        "KUEUE_LOCAL_QUEUE",
        "",
        parsers.optional_label_name,
        "Kueue LocalQueue (in JOB_NAMESPACE) that decides when each Job runs: Jobs are created "
        "suspended with its queue-name label and wait, never answered for waiting, until Kueue "
        "admits them (empty: no Kueue; see docs/kueue.md).",
    )
    kueue_priority_class: str = _setting(
        "KUEUE_PRIORITY_CLASS",
        "",
        parsers.optional_label_name,
        "With KUEUE_LOCAL_QUEUE: the Kueue WorkloadPriorityClass of every Job of this "
        "installation (empty: the ClusterQueue's default).",
    )
    celery_queue_name: str = _setting(
        "CELERY_QUEUE_NAME",
        "dispatcher.internal",
        parsers.amqp_name(allow_empty=False),
        "Internal Celery queue of the submit and finalize tasks.",
    )
    watch_timeout_seconds: int = _setting(
        "WATCH_TIMEOUT_SECONDS",
        240,
        parsers.integer(10, 3600),
        "Server-side timeout of one Kubernetes watch request; the watch then resumes.",
    )
    worker_concurrency: int = _setting(
        "WORKER_CONCURRENCY",
        16,
        parsers.integer(1, 256),
        "Threads running the short submit and finalize tasks in one worker (they mostly wait "
        "for the API server).",
    )
    health_port: int = _setting(
        "HEALTH_PORT",
        8000,
        parsers.integer(0, 65535),
        "Port of the HTTP health and metrics server (0: disabled).",
    )
    status_port: int = _setting(
        "STATUS_PORT",
        8001,
        parsers.integer(0, 65535),
        "Port of the read-only status page (the overview and a page per task), bound to "
        "127.0.0.1 only: reach it with kubectl port-forward (0: disabled).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting(
        "LOG_LEVEL",
        "INFO",
        parsers.choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "DEBUG, INFO, WARNING or ERROR.",
    )
    log_format: Literal["text", "json"] = _setting(
        "LOG_FORMAT",
        "text",
        parsers.choice("text", "json"),
        "text for people, json for log collectors.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse every setting from ``env``; unset variables take their defaults."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            variable: _Variable = item.metadata[_META]
            raw = env.get(variable.env)
            if raw is None:
                continue
            try:
                values[item.name] = variable.parse(raw)
            except parsers.Rejected as exc:
                raise ConfigError(variable.env, str(exc)) from None
        settings = cls(**values)
        _check_tls(settings)
        _check_limits(settings)
        _check_queues(settings)
        if settings.kueue_priority_class and not settings.kueue_local_queue:
            raise ConfigError("KUEUE_PRIORITY_CLASS", "is set but KUEUE_LOCAL_QUEUE is not")
        if settings.status_port and settings.status_port == settings.health_port:
            raise ConfigError(
                "STATUS_PORT", f"must differ from HEALTH_PORT, got {settings.status_port}"
            )
        return settings

    @property
    def has_control_queue(self) -> bool:
        """A control queue needs routing keys: on a fanout or headers task exchange, cancel
        requests travel on the task queue only."""
        return self.task_exchange_type in ("direct", "topic")

    @property
    def broker_ssl(self) -> dict[str, Any] | None:
        """The TLS options of every broker connection (py-amqp's `ssl`), or None without TLS:
        the broker's certificate is verified, and so is its name."""
        if not self.amqp_tls:
            return None
        return {
            "ca_certs": self.amqp_ca_file,
            "certfile": self.amqp_cert_file,
            "keyfile": self.amqp_key_file,
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": self.amqp_server_name or self.broker_addresses[0][0],
        }

    @property
    def broker_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker node of AMQP_HOST with its port (AMQP_PORT unless it names one)."""
        found = (parsers.address(item) for item in self.amqp_host.split(","))
        return tuple((host, port or self.amqp_port) for host, port in found)

    @property
    def broker_urls(self) -> list[str]:
        """One AMQP URL per broker node, with user, password and virtual host percent-quoted."""
        user = quote(self.amqp_user, safe="")
        password = quote(self.amqp_password, safe="")
        vhost = quote(self.amqp_vhost, safe="")
        scheme = "amqps" if self.amqp_tls else "amqp"
        urls = []
        for host, port in self.broker_addresses:
            shown = f"[{host}]" if ":" in host else host  # an IPv6 address
            urls.append(f"{scheme}://{user}:{password}@{shown}:{port}/{vhost}")
        return urls

    @property
    def broker_url(self) -> str:
        """The broker URLs as kombu and Celery take them: several are tried in turn."""
        return ";".join(self.broker_urls)


def _check_tls(settings: Settings) -> None:
    """A client certificate needs its key, and neither means anything without TLS."""
    if bool(settings.amqp_cert_file) != bool(settings.amqp_key_file):
        given, missing = (
            ("AMQP_CERT_FILE", "AMQP_KEY_FILE")
            if settings.amqp_cert_file
            else ("AMQP_KEY_FILE", "AMQP_CERT_FILE")
        )
        raise ConfigError(missing, f"must be set too when {given} is set")
    if settings.amqp_tls and "," in settings.amqp_host and not settings.amqp_server_name:
        raise ConfigError(
            "AMQP_SERVER_NAME",
            "must be set when AMQP_TLS is true and AMQP_HOST names several nodes: it is the name "
            "every node's certificate is checked against",
        )
    tls_only = ("AMQP_CA_FILE", "AMQP_CERT_FILE", "AMQP_KEY_FILE", "AMQP_SERVER_NAME")
    values = (
        settings.amqp_ca_file,
        settings.amqp_cert_file,
        settings.amqp_key_file,
        settings.amqp_server_name,
    )
    if not settings.amqp_tls:
        for name, value in zip(tls_only, values, strict=True):
            if value:
                raise ConfigError(name, "is set but AMQP_TLS is not true (no TLS is used)")


def _check_queues(settings: Settings) -> None:
    """The control queue is a queue of its own, bound with a routing key of its own."""
    others = {
        "TASK_QUEUE_NAME": settings.task_queue_name,
        "RESPONSE_QUEUE_NAME": settings.response_queue_name,
        "CELERY_QUEUE_NAME": settings.celery_queue_name,
    }
    for env, name in others.items():
        if settings.control_queue_name == name:
            raise ConfigError("CONTROL_QUEUE_NAME", f"must differ from {env}, got '{name}'")
    if settings.has_control_queue and settings.control_routing_key == settings.task_routing_key:
        raise ConfigError(
            "CONTROL_ROUTING_KEY",
            f"must differ from TASK_ROUTING_KEY, got '{settings.control_routing_key}'",
        )


def _check_limits(settings: Settings) -> None:
    """Refuse a limit below its request: Kubernetes would reject every Job."""
    pairs = (
        ("JOB_CPU_REQUEST", settings.job_cpu_request, "JOB_CPU_LIMIT", settings.job_cpu_limit),
        (
            "JOB_MEMORY_REQUEST",
            settings.job_memory_request,
            "JOB_MEMORY_LIMIT",
            settings.job_memory_limit,
        ),
    )
    for request_env, request, limit_env, limit in pairs:
        if request and limit and parsers.amount(limit) < parsers.amount(request):
            raise ConfigError(
                limit_env, f"must not be less than {request_env} ({request}), got '{limit}'"
            )


@dataclass(frozen=True)
class SettingDoc:
    """One row of the settings documentation."""

    env: str
    default: str
    """The default as a user would write it in the environment ("" when unset)."""
    description: str
    secret: bool = False
    """Its value is never printed (``dispatcher config`` shows it masked)."""


def _shown(default: object) -> str:
    if default is None:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default)
    return str(default)


def _documentation() -> tuple[SettingDoc, ...]:
    rows = []
    for item in fields(Settings):
        variable: _Variable = item.metadata[_META]
        doc = SettingDoc(variable.env, _shown(item.default), variable.description, not item.repr)
        rows.append(doc)
    return tuple(rows)


SETTINGS_TABLE: Final[tuple[SettingDoc, ...]] = _documentation()
"""Every setting in documentation order (the original contract's first), derived from Settings."""
