"""Settings from the environment, parsed once at start-up.

:meth:`Settings.from_env` returns a complete, valid :class:`Settings` or raises
:class:`~dispatcher.errors.ConfigError` naming the first bad variable in one line, for example
``AMQP_PORT: must be a whole number from 1 to 65535, got 'abc'``. The value of
``AMQP_PASSWORD`` never appears in an error or in ``repr(settings)``.

Each setting is declared once, as a dataclass field that carries its environment variable, its
parser and its description; :data:`SETTINGS_TABLE` (the documentation of all settings) is derived
from those fields, so defaults cannot drift between code and docs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

from dispatcher.errors import ConfigError

_T = TypeVar("_T")
_Parser = Callable[[str], Any]
_META: Final = "dispatcher.setting"

_INTEGER = re.compile(r"-?[0-9]{1,20}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_QUANTITY_FACTOR: Final[Mapping[str, Decimal]] = MappingProxyType(
    {
        "": Decimal(1),
        "m": Decimal("0.001"),
        **{suffix: Decimal(1000) ** power for power, suffix in enumerate("kMGTPE", start=1)},
        **{f"{s}i": Decimal(1024) ** power for power, s in enumerate("KMGTPE", start=1)},
    }
)
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_SHOWN_MAX: Final = 80

_EXCHANGE_TYPES: Final = ("direct", "topic", "fanout", "headers")


class _Rejected(Exception):
    """A parser's verdict on one raw value; ``from_env`` adds the variable's name."""


@dataclass(frozen=True)
class _Variable:
    env: str
    parse: _Parser
    description: str


def _setting(
    env: str, default: _T, parse: _Parser, description: str, *, secret: bool = False
) -> _T:
    """Declare a setting: its field default, variable, parser and documentation in one place."""
    metadata = {_META: _Variable(env, parse, description)}
    return field(default=default, repr=not secret, metadata=metadata)


def _quoted(raw: str) -> str:
    """Show a raw value in an error: plain quotes, one line, bounded length."""
    shown = "".join(char if char.isprintable() else "?" for char in raw[:_SHOWN_MAX])
    return f"'{shown}{'...' if len(raw) > _SHOWN_MAX else ''}'"


def _integer(low: int, high: int) -> _Parser:
    def parse(raw: str) -> int:
        text = raw.strip()
        if _INTEGER.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        raise _Rejected(f"must be a whole number from {low} to {high}, got {_quoted(raw)}")

    return parse


def _boolean(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _Rejected(f"must be one of true, false, 1, 0, yes, no, got {_quoted(raw)}")


def _choice(*options: str) -> _Parser:
    """One of ``options``, matched without regard to case and returned as spelled there."""

    def parse(raw: str) -> str:
        text = raw.strip().lower()
        for option in options:
            if text == option.lower():
                return option
        raise _Rejected(f"must be one of {', '.join(options)}, got {_quoted(raw)}")

    return parse


def _amqp_name(*, allow_empty: bool) -> _Parser:
    """An exchange, queue or routing-key name: printable, at most 255 bytes (AMQP shortstr)."""

    def parse(raw: str) -> str:
        if (raw or allow_empty) and raw.isprintable() and len(raw.encode()) <= 255:
            return raw
        size = "0 to 255" if allow_empty else "1 to 255"
        raise _Rejected(f"must be {size} bytes of printable text, got {_quoted(raw)}")

    return parse


def _text(raw: str) -> str:
    if raw and raw.isprintable():
        return raw
    raise _Rejected(f"must be non-empty printable text, got {_quoted(raw)}")


def _secret(raw: str) -> str:
    if raw and raw.isprintable():
        return raw
    raise _Rejected("must be non-empty printable text (the value is not shown)")


def _host(raw: str) -> str:
    if raw and raw.isprintable() and not any(char in raw for char in " /@?#"):
        return raw
    raise _Rejected(f"must be a host name or IP address, got {_quoted(raw)}")


def _dns_label(raw: str) -> str:
    if len(raw) <= 63 and _DNS_LABEL.fullmatch(raw):
        return raw
    raise _Rejected(
        "must be an RFC 1123 label: 1 to 63 lower-case letters, digits or '-', starting and "
        f"ending with a letter or digit, got {_quoted(raw)}"
    )


def _dns_subdomain(raw: str) -> str:
    if len(raw) <= 253 and _DNS_SUBDOMAIN.fullmatch(raw):
        return raw
    raise _Rejected(
        "must be a Kubernetes object name (RFC 1123 subdomain): at most 253 lower-case letters, "
        f"digits, '-' or '.', starting and ending with a letter or digit, got {_quoted(raw)}"
    )


def _optional_path(raw: str) -> str | None:
    text = raw.strip()
    if text.isprintable():
        return text or None
    raise _Rejected(f"must be a file path or empty, got {_quoted(raw)}")


def _prefixes(raw: str) -> tuple[str, ...]:
    prefixes = tuple(item.strip() for item in raw.split(",") if item.strip())
    for prefix in prefixes:
        if not prefix.isprintable() or " " in prefix:
            raise _Rejected(f"must be comma-separated image prefixes, got {_quoted(prefix)}")
        if not prefix.endswith(
            "/"
        ):  # else 'registry.example.com' allows 'registry.example.com.evil.io/x'
            raise _Rejected(f"each prefix must end with '/', got {_quoted(prefix)}")
    return prefixes


def _quantity(raw: str) -> str:
    text = raw.strip()
    if not text or _QUANTITY.fullmatch(text):
        return text
    raise _Rejected(
        f"must be a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi (or empty for none), "
        f"got {_quoted(raw)}"
    )


def _amount(quantity: str) -> Decimal:
    """The numeric value of a quantity already accepted by :func:`_quantity`."""
    match = _QUANTITY.fullmatch(quantity)
    assert match is not None  # guaranteed by _quantity
    return Decimal(match[1]) * _QUANTITY_FACTOR[match[2] or ""]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All settings of a dispatcher process; build it with :meth:`from_env`."""

    # The original contract's variables, defaults unchanged.
    amqp_user: str = _setting("AMQP_USER", "guest", _text, "RabbitMQ user name.")
    amqp_password: str = _setting(
        "AMQP_PASSWORD", "guest", _secret, "RabbitMQ password.", secret=True
    )
    amqp_host: str = _setting(
        "AMQP_HOST", "rabbitmq.dispatcher.svc.cluster.local", _host, "RabbitMQ host name."
    )
    amqp_port: int = _setting("AMQP_PORT", 5672, _integer(1, 65535), "RabbitMQ AMQP port.")
    amqp_vhost: str = _setting("AMQP_VHOST", "/", _text, "RabbitMQ virtual host.")
    task_queue_name: str = _setting(
        "TASK_QUEUE_NAME", "tasks", _amqp_name(allow_empty=False), "Queue the tasks are read from."
    )
    task_exchange_name: str = _setting(
        "TASK_EXCHANGE_NAME",
        "tasks",
        _amqp_name(allow_empty=False),
        "Exchange the task queue is bound to.",
    )
    task_exchange_type: Literal["direct", "topic", "fanout", "headers"] = _setting(
        "TASK_EXCHANGE_TYPE",
        "direct",
        _choice(*_EXCHANGE_TYPES),
        "Type of the task exchange: direct, topic, fanout or headers.",
    )
    task_routing_key: str = _setting(
        "TASK_ROUTING_KEY",
        "task",
        _amqp_name(allow_empty=True),
        "Routing key binding the task queue to the task exchange.",
    )
    response_queue_name: str = _setting(
        "RESPONSE_QUEUE_NAME",
        "responses",
        _amqp_name(allow_empty=False),
        "Queue the responses are delivered to (declared and bound by the dispatcher).",
    )
    response_exchange_name: str = _setting(
        "RESPONSE_EXCHANGE_NAME",
        "responses",
        _amqp_name(allow_empty=False),
        "Exchange the responses are published to.",
    )
    response_exchange_type: Literal["direct", "topic", "fanout", "headers"] = _setting(
        "RESPONSE_EXCHANGE_TYPE",
        "direct",
        _choice(*_EXCHANGE_TYPES),
        "Type of the response exchange: direct, topic, fanout or headers.",
    )
    response_routing_key: str = _setting(
        "RESPONSE_ROUTING_KEY",
        "response",
        _amqp_name(allow_empty=True),
        "Routing key the responses are published with.",
    )
    pv_name: str = _setting(
        "PV_NAME",
        "worker-pv-volume",
        _dns_subdomain,
        "PersistentVolume behind PVC_NAME (created by the manifests; Jobs only mount the claim).",
    )
    pvc_name: str = _setting(
        "PVC_NAME",
        "worker-pv-claim",
        _dns_subdomain,
        "PersistentVolumeClaim mounted into every Job at the task's volume_mount_path.",
    )
    internal_service_account_name: str = _setting(
        "INTERNAL_SERVICE_ACCOUNT_NAME",
        "job-internal",
        _dns_subdomain,
        "Service account the Job pods run as (its token is not mounted).",
    )
    k8s_in_cluster: bool = _setting(
        "K8S_IN_CLUSTER",
        True,
        _boolean,
        "true: use the pod's service account; false: use a kubeconfig file.",
    )

    # Additions.
    job_namespace: str = _setting(
        "JOB_NAMESPACE", "dispatcher", _dns_label, "Namespace the Jobs are created in."
    )
    dispatcher_name: str = _setting(
        "DISPATCHER_NAME",
        "dispatcher",
        _dns_label,
        "Name of this installation; labels its Jobs so several can share a namespace.",
    )
    kubeconfig: str | None = _setting(
        "KUBECONFIG",
        None,
        _optional_path,
        "Kubeconfig file, used only when K8S_IN_CLUSTER=false (empty: the client's default).",
    )
    task_ack_mode: Literal["confirmed", "immediate"] = _setting(
        "TASK_ACK_MODE",
        "confirmed",
        _choice("confirmed", "immediate"),
        "confirmed: ack a task once it is durably handed on; immediate: ack on receipt.",
    )
    task_prefetch: int = _setting(
        "TASK_PREFETCH", 16, _integer(1, 1000), "Unacknowledged task messages per consumer."
    )
    max_task_bytes: int = _setting(
        "MAX_TASK_BYTES", 65536, _integer(256, 16777216), "Largest task message accepted, in bytes."
    )
    max_output_bytes: int = _setting(
        "MAX_OUTPUT_BYTES",
        1048576,
        _integer(1024, 67108864),
        "Most log bytes returned per task; the tail is kept and the cut is marked.",
    )
    image_pull_grace_seconds: int = _setting(
        "IMAGE_PULL_GRACE_SECONDS",
        60,
        _integer(0, 900),  # countdown tasks must stay well inside RabbitMQ's consumer_timeout
        "How long an image pull, scheduling, container config or pod creation error may last "
        "before the task is answered with an error.",
    )
    job_max_run_seconds: int = _setting(
        "JOB_MAX_RUN_SECONDS",
        3600,
        _integer(1, 604800),
        "Longest a task's pod may run (activeDeadlineSeconds).",
    )
    job_ttl_seconds: int = _setting(
        "JOB_TTL_SECONDS",
        604800,
        _integer(60, 31536000),
        "Finished Jobs are deleted by Kubernetes after this long if the dispatcher did not.",
    )
    job_image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = _setting(
        "JOB_IMAGE_PULL_POLICY",
        "IfNotPresent",
        _choice("IfNotPresent", "Always", "Never"),
        "imagePullPolicy of the task container: IfNotPresent, Always or Never.",
    )
    allowed_image_prefixes: tuple[str, ...] = _setting(
        "ALLOWED_IMAGE_PREFIXES",
        (),
        _prefixes,
        "Comma-separated prefixes a task image must start with, each ending in '/', e.g. "
        "'registry.example.com/team/'; empty: any image.",
    )
    job_cpu_request: str = _setting(
        "JOB_CPU_REQUEST", "100m", _quantity, "CPU request of the task container (empty: none)."
    )
    job_memory_request: str = _setting(
        "JOB_MEMORY_REQUEST",
        "64Mi",
        _quantity,
        "Memory request of the task container (empty: none).",
    )
    job_cpu_limit: str = _setting(
        "JOB_CPU_LIMIT", "", _quantity, "CPU limit of the task container (empty: none)."
    )
    job_memory_limit: str = _setting(
        "JOB_MEMORY_LIMIT", "", _quantity, "Memory limit of the task container (empty: none)."
    )
    celery_queue_name: str = _setting(
        "CELERY_QUEUE_NAME",
        "dispatcher.internal",
        _amqp_name(allow_empty=False),
        "Internal Celery queue of the submit and finalize tasks.",
    )
    watch_timeout_seconds: int = _setting(
        "WATCH_TIMEOUT_SECONDS",
        240,
        _integer(10, 3600),
        "Server-side timeout of one Kubernetes watch request; the watch then resumes.",
    )
    worker_concurrency: int = _setting(
        "WORKER_CONCURRENCY",
        8,
        _integer(1, 256),
        "Threads running the short submit and finalize tasks in one worker.",
    )
    health_port: int = _setting(
        "HEALTH_PORT",
        8000,
        _integer(0, 65535),
        "Port of the HTTP health and metrics server (0: disabled).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting(
        "LOG_LEVEL",
        "INFO",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "DEBUG, INFO, WARNING or ERROR.",
    )
    log_format: Literal["text", "json"] = _setting(
        "LOG_FORMAT",
        "text",
        _choice("text", "json"),
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
            except _Rejected as exc:
                raise ConfigError(variable.env, str(exc)) from None
        settings = cls(**values)
        _check_limits(settings)
        return settings

    @property
    def broker_url(self) -> str:
        """The AMQP URL, with user, password and virtual host percent-quoted."""
        user = quote(self.amqp_user, safe="")
        password = quote(self.amqp_password, safe="")
        vhost = quote(self.amqp_vhost, safe="")
        host = self.amqp_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"amqp://{user}:{password}@{host}:{self.amqp_port}/{vhost}"


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
        if request and limit and _amount(limit) < _amount(request):
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


def _shown(default: object) -> str:
    if default is None:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def _documentation() -> tuple[SettingDoc, ...]:
    rows = []
    for item in fields(Settings):
        variable: _Variable = item.metadata[_META]
        rows.append(SettingDoc(variable.env, _shown(item.default), variable.description))
    return tuple(rows)


SETTINGS_TABLE: Final[tuple[SettingDoc, ...]] = _documentation()
"""Every setting in documentation order (the original contract's first), derived from Settings."""
