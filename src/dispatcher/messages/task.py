"""Task messages: parse raw bytes into a valid :class:`Task`, or say exactly what is wrong.

Parse, don't validate: :func:`parse_task` returns a :class:`Task` whose every field already obeys
the contract (the id is a valid Job name, the image a valid reference allowed by policy, the mount
path safe to mount), or raises :class:`~dispatcher.errors.InvalidTaskError` whose text names the
field and the rule in one line, e.g. ``args[2]: must be a string, got number``. Fields are checked
in a fixed order (id, image, volume_mount_path, working_dir, cmd, args, env, timeout_seconds,
resources, retries, retry_on_exit_codes), so the same bad message always gets the same answer.
Unknown fields are ignored: nothing else in a task can reach the Job. Every optional addition is
bounded by the operator's :class:`TaskPolicy` (from settings), and an error outside it names the
field, the limit and the setting that sets it.

:func:`parse_message` also knows the one other message of the task queue: ``{"cancel": "<id>"}``,
a request to stop a task (:class:`Cancel`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, NoReturn

from dispatcher import parsers
from dispatcher.config import Settings
from dispatcher.errors import InvalidTaskError

MAX_ID_LENGTH: Final = 63
MAX_IMAGE_LENGTH: Final = 512
MAX_PATH_LENGTH: Final = 1024
MAX_LIST_ITEMS: Final = 1024
MAX_ENV_NAME_LENGTH: Final = 256
RESERVED_ENV: Final = frozenset({"TASK_ID"})
"""Environment variables the dispatcher sets in every task container: a task cannot set them."""
RESOURCE_NAMES: Final = ("cpu", "memory")
MAX_EXIT_CODE: Final = 255
_PEEK_ID_LENGTH: Final = 253
PEEK_HEAD_BYTES: Final = 65536

_ID = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# The shape of a container image reference (github.com/distribution/reference), simplified:
# [registry[:port]/]path[:tag][@sha256:<64 hex>], with lower-case path components.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?"
)

_ID_RULE: Final = (
    "must be an RFC 1035 label: 1 to 63 lower-case letters, digits or '-', "
    "starting with a letter and ending with a letter or digit"
)
_IMAGE_RULE: Final = (
    "must be a container image reference like registry.example.com/team/app:1.0 "
    "(lower-case path, optional :tag and @sha256:digest)"
)


@dataclass(frozen=True)
class TaskPolicy:
    """The operator's bounds on what a task may ask for (:meth:`from_settings`)."""

    max_bytes: int = 65536
    allowed_image_prefixes: Sequence[str] = ()
    max_run_seconds: int = 3600
    max_env_vars: int = 64
    max_env_bytes: int = 32768
    max_cpu: str = "2"
    max_memory: str = "4Gi"
    max_retries: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskPolicy:
        """The bounds the operator set in the environment."""
        return cls(
            max_bytes=settings.max_task_bytes,
            allowed_image_prefixes=settings.allowed_image_prefixes,
            max_run_seconds=settings.job_max_run_seconds,
            max_env_vars=settings.task_max_env_vars,
            max_env_bytes=settings.task_max_env_bytes,
            max_cpu=settings.task_max_cpu,
            max_memory=settings.task_max_memory,
            max_retries=settings.task_max_retries,
        )


@dataclass(frozen=True)
class Resources:
    """What one task's container requests, as Kubernetes quantities (None: the operator's
    default request)."""

    cpu: str | None = None
    memory: str | None = None

    def to_json(self) -> dict[str, str]:
        return {name: value for name in RESOURCE_NAMES if (value := getattr(self, name))}


@dataclass(frozen=True)
class Task:
    """A valid task: what to run and where to mount the shared volume, and optionally its
    environment, its own time limit, the resources it requests, and how often it is run again
    when it fails (`retries`, for the exit codes `retry_on_exit_codes`; None: any non-zero)."""

    id: str
    image: str
    volume_mount_path: str
    working_dir: str | None = None
    args: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: Mapping[str, str] | None = field(default=None, hash=False)
    timeout_seconds: int | None = None
    resources: Resources | None = None
    retries: int = 0
    retry_on_exit_codes: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object of this task: only the fields that are set."""
        document: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "volume_mount_path": self.volume_mount_path,
        }
        if self.working_dir is not None:
            document["working_dir"] = self.working_dir
        if self.args is not None:
            document["args"] = list(self.args)
        if self.cmd is not None:
            document["cmd"] = list(self.cmd)
        if self.env is not None:
            document["env"] = dict(sorted(self.env.items()))
        if self.timeout_seconds is not None:
            document["timeout_seconds"] = self.timeout_seconds
        if self.resources is not None:
            document["resources"] = self.resources.to_json()
        if self.retries:
            document["retries"] = self.retries
        if self.retry_on_exit_codes is not None:
            document["retry_on_exit_codes"] = list(self.retry_on_exit_codes)
        return document

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: equal for equal tasks, whatever the field order."""
        canonical = json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Cancel:
    """A request to stop the task ``id`` (``{"cancel": "<id>"}`` on the task queue)."""

    id: str

    def to_json(self) -> dict[str, str]:
        return {"cancel": self.id}


_DEFAULT_POLICY: Final = TaskPolicy()


def parse_task(body: bytes | str, policy: TaskPolicy = _DEFAULT_POLICY) -> Task:
    """Parse a raw task message; raise InvalidTaskError naming the first broken rule."""
    return _parse_task(_load_object(body, policy.max_bytes), policy)


def parse_message(body: bytes | str, policy: TaskPolicy = _DEFAULT_POLICY) -> Task | Cancel:
    """Parse a raw message of the task queue: a task, or a cancel request (a JSON object with a
    ``cancel`` key, whose value must be a task id)."""
    document = _load_object(body, policy.max_bytes)
    if "cancel" not in document:
        return _parse_task(document, policy)
    target = document["cancel"]
    task_id = target if isinstance(target, str) and 0 < len(target) <= _PEEK_ID_LENGTH else None
    try:
        return Cancel(_parse_id({"cancel": target}, "cancel"))
    except InvalidTaskError as exc:
        raise InvalidTaskError(exc.field, exc.reason, task_id) from None


def _parse_task(document: Mapping[str, Any], policy: TaskPolicy) -> Task:
    task_id = _parse_id(document)
    try:
        return Task(
            id=task_id,
            image=_parse_image(document, policy.allowed_image_prefixes),
            volume_mount_path=_parse_mount_path(document),
            working_dir=_parse_working_dir(document),
            cmd=_parse_strings(document, "cmd"),
            args=_parse_strings(document, "args"),
            env=_parse_env(document, policy),
            timeout_seconds=_parse_timeout(document, policy),
            resources=_parse_resources(document, policy),
            retries=_parse_retries(document, policy),
            retry_on_exit_codes=_parse_exit_codes(document),
        )
    except InvalidTaskError as exc:
        raise InvalidTaskError(exc.field, exc.reason, task_id) from None


def peek_task_id(body: bytes | str) -> str | None:
    """Best effort: the string ``id`` of a JSON object body (at most 253 chars), else None.

    Reads at most the first PEEK_HEAD_BYTES of the body, so an oversized message costs no more
    than a small one: a body longer than that is scanned key by key from its start, and its id
    is found when it comes before the cut (producers put it first)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw) > PEEK_HEAD_BYTES:
        task_id = _scan_head_for_id(raw[:PEEK_HEAD_BYTES].decode("utf-8", "ignore"))
    else:
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError, TypeError):
            return None
        task_id = document.get("id") if isinstance(document, dict) else None
    if isinstance(task_id, str) and len(task_id) <= _PEEK_ID_LENGTH:
        return task_id
    return None


def _scan_head_for_id(head: str) -> object:
    """The value of the first top-level ``id`` key in the cut-off JSON object text `head`."""
    decoder = json.JSONDecoder()
    at = _skip_space(head, 0)
    if head[at : at + 1] != "{":
        return None
    at += 1
    try:
        while True:
            at = _skip_space(head, at)
            key, at = decoder.raw_decode(head, at)
            at = _skip_space(head, at)
            if not isinstance(key, str) or head[at : at + 1] != ":":
                return None
            at = _skip_space(head, at + 1)
            value, at = decoder.raw_decode(head, at)
            if key == "id":
                return value
            at = _skip_space(head, at)
            if head[at : at + 1] != ",":
                return None
            at += 1
    except (ValueError, RecursionError):  # cut off before an id, or not JSON
        return None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":  # JSON's whitespace
        at += 1
    return at


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type: object, array, string, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# --- the message as a whole -------------------------------------------------------------------


class _RejectedConstant(Exception):
    """NaN, Infinity and -Infinity are JavaScript, not JSON."""


def _reject_constant(name: str) -> NoReturn:
    raise _RejectedConstant(f"{name} is not a JSON value")


def _load_object(body: bytes | str, max_bytes: int) -> Mapping[str, Any]:
    raw = _as_bytes(body)
    if len(raw) > max_bytes:
        raise InvalidTaskError(
            "message", f"is {len(raw)} bytes; the limit is {max_bytes} bytes (MAX_TASK_BYTES)"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidTaskError("message", "is not UTF-8 text") from None
    document = _load_json(text)
    if not isinstance(document, dict):
        raise InvalidTaskError("message", f"must be a JSON object, got {_json_type(document)}")
    return document


def _as_bytes(body: bytes | str) -> bytes:
    if isinstance(body, bytes):
        return body
    try:
        return body.encode()
    except UnicodeEncodeError:
        raise InvalidTaskError("message", "is not UTF-8 text") from None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except _RejectedConstant as exc:
        reason = str(exc)
    except RecursionError:
        reason = "it is nested too deeply"
    except ValueError:  # an integer literal with thousands of digits
        reason = "a number has too many digits"
    raise InvalidTaskError("message", f"is not valid JSON: {reason}")


# --- fields ------------------------------------------------------------------------------------


def _required_string(document: Mapping[str, Any], field: str) -> str:
    if field not in document:
        raise InvalidTaskError(field, "is required")
    return _string(document[field], field)


def _optional(document: Mapping[str, Any], field: str) -> Any:
    """The field's value, or None when it is absent or null (both mean "not set")."""
    return document.get(field)


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidTaskError(field, f"must be a string, got {_json_type(value)}")
    if not value:
        raise InvalidTaskError(field, "must not be empty")
    return value


def _parse_id(document: Mapping[str, Any], field: str = "id") -> str:
    task_id = _required_string(document, field)
    if len(task_id) > MAX_ID_LENGTH:
        raise InvalidTaskError(
            field, f"must be at most {MAX_ID_LENGTH} characters, got {len(task_id)}"
        )
    if not _ID.fullmatch(task_id):
        raise InvalidTaskError(field, _ID_RULE)
    return task_id


def _parse_image(document: Mapping[str, Any], allowed_prefixes: Sequence[str]) -> str:
    image = _required_string(document, "image")
    _check_length(image, "image", MAX_IMAGE_LENGTH)
    if _WHITESPACE_OR_CONTROL.search(image):
        raise InvalidTaskError("image", "must not contain whitespace or control characters")
    if not _IMAGE.fullmatch(image):
        raise InvalidTaskError("image", _IMAGE_RULE)
    if allowed_prefixes and not image.startswith(tuple(allowed_prefixes)):
        raise InvalidTaskError(
            "image", f"'{image}' is not allowed; allowed prefixes: {', '.join(allowed_prefixes)}"
        )
    return image


def _parse_mount_path(document: Mapping[str, Any]) -> str:
    path = _required_string(document, "volume_mount_path")
    _check_path(path, "volume_mount_path")
    if ":" in path:
        raise InvalidTaskError("volume_mount_path", "must not contain ':'")
    segments = path.split("/")
    if ".." in segments:
        raise InvalidTaskError("volume_mount_path", "must not contain a '..' segment")
    if all(segment in ("", ".") for segment in segments):
        raise InvalidTaskError("volume_mount_path", "must not be the root directory '/'")
    return path


def _parse_working_dir(document: Mapping[str, Any]) -> str | None:
    value = _optional(document, "working_dir")
    if value is None:
        return None
    path = _string(value, "working_dir")
    _check_path(path, "working_dir")
    return path


def _check_path(path: str, field: str) -> None:
    _check_length(path, field, MAX_PATH_LENGTH)
    if _CONTROL.search(path):
        raise InvalidTaskError(field, "must not contain control characters")
    if not path.startswith("/"):
        raise InvalidTaskError(field, "must be an absolute path")


def _check_length(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidTaskError(field, f"must be at most {limit} characters, got {len(value)}")


def _parse_strings(document: Mapping[str, Any], field: str) -> tuple[str, ...] | None:
    value = _optional(document, field)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidTaskError(field, f"must be an array of strings, got {_json_type(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise InvalidTaskError(field, f"must have at most {MAX_LIST_ITEMS} items, got {len(value)}")
    return tuple(_list_item(item, f"{field}[{index}]") for index, item in enumerate(value))


def _list_item(item: object, name: str) -> str:
    if not isinstance(item, str):
        raise InvalidTaskError(name, f"must be a string, got {_json_type(item)}")
    if "\x00" in item:
        raise InvalidTaskError(name, "must not contain NUL characters")
    return item


def _parse_env(document: Mapping[str, Any], policy: TaskPolicy) -> dict[str, str] | None:
    value = _optional(document, "env")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTaskError("env", f"must be an object of strings, got {_json_type(value)}")
    if len(value) > policy.max_env_vars:
        raise InvalidTaskError(
            "env",
            f"must have at most {policy.max_env_vars} variables (TASK_MAX_ENV_VARS), "
            f"got {len(value)}",
        )
    size = 0
    for name, item in value.items():
        _check_env_name(name)
        shown = f"env.{name}"
        if not isinstance(item, str):
            raise InvalidTaskError(shown, f"must be a string, got {_json_type(item)}")
        if "\x00" in item:
            raise InvalidTaskError(shown, "must not contain NUL characters")
        size += len(name.encode()) + len(item.encode("utf-8", "surrogatepass"))
    if size > policy.max_env_bytes:
        raise InvalidTaskError(
            "env",
            f"names and values must total at most {policy.max_env_bytes} bytes "
            f"(TASK_MAX_ENV_BYTES), got {size}",
        )
    return dict(value)


def _check_env_name(name: str) -> None:
    shown = f"env.{_printable(name)}"
    if len(name) > MAX_ENV_NAME_LENGTH:
        raise InvalidTaskError(
            shown[:80], f"names must be at most {MAX_ENV_NAME_LENGTH} characters, got {len(name)}"
        )
    if not _ENV_NAME.fullmatch(name):
        raise InvalidTaskError(
            shown,
            "names must be letters, digits and '_', not starting with a digit",
        )
    if name in RESERVED_ENV:
        raise InvalidTaskError(shown, "is set by the dispatcher and cannot be overridden")


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text[:64])


def _parse_timeout(document: Mapping[str, Any], policy: TaskPolicy) -> int | None:
    value = _optional(document, "timeout_seconds")
    if value is None:
        return None
    high = policy.max_run_seconds
    rule = f"must be a whole number of seconds from 1 to {high} (JOB_MAX_RUN_SECONDS)"
    return _whole_number("timeout_seconds", value, 1, high, rule)


def _parse_retries(document: Mapping[str, Any], policy: TaskPolicy) -> int:
    value = _optional(document, "retries")
    if value is None:
        return 0
    high = policy.max_retries
    rule = f"must be a whole number from 0 to {high} (TASK_MAX_RETRIES)"
    return _whole_number("retries", value, 0, high, rule)


def _whole_number(field: str, value: object, low: int, high: int, rule: str) -> int:
    """`value` as a whole number from `low` to `high` (a JSON number with no fraction), or the
    error naming `field` and its `rule`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTaskError(field, f"{rule}, got {_json_type(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidTaskError(field, f"{rule}, got {value}")
    number = int(value)
    if not low <= number <= high:
        raise InvalidTaskError(field, f"{rule}, got {number}")
    return number


def _parse_exit_codes(document: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The exit codes a failed attempt is run again for, in the order given (None: any
    non-zero exit code)."""
    value = _optional(document, "retry_on_exit_codes")
    if value is None:
        return None
    field = "retry_on_exit_codes"
    if not isinstance(value, list):
        raise InvalidTaskError(field, f"must be an array of exit codes, got {_json_type(value)}")
    if not value:
        raise InvalidTaskError(field, "must not be empty (leave it out: any non-zero exit code)")
    codes: list[int] = []
    rule = f"must be an exit code from 1 to {MAX_EXIT_CODE}"
    for index, code in enumerate(value):
        if isinstance(code, bool) or not isinstance(code, int):
            raise InvalidTaskError(f"{field}[{index}]", f"{rule}, got {_json_type(code)}")
        if not 1 <= code <= MAX_EXIT_CODE:
            raise InvalidTaskError(f"{field}[{index}]", f"{rule}, got {code}")
        if code in codes:
            raise InvalidTaskError(f"{field}[{index}]", f"repeats exit code {code}")
        codes.append(code)
    return tuple(codes)


def _parse_resources(document: Mapping[str, Any], policy: TaskPolicy) -> Resources | None:
    value = _optional(document, "resources")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTaskError(
            "resources", f"must be an object with cpu and/or memory, got {_json_type(value)}"
        )
    for name in value:
        if name not in RESOURCE_NAMES:
            raise InvalidTaskError(
                f"resources.{_printable(name)}",
                f"is not a resource a task may request; allowed: {', '.join(RESOURCE_NAMES)}",
            )
    maxima = {
        "cpu": (policy.max_cpu, "TASK_MAX_CPU"),
        "memory": (policy.max_memory, "TASK_MAX_MEMORY"),
    }
    requested: dict[str, str] = {}
    for name, (maximum, setting) in maxima.items():
        quantity = _optional(value, name)
        if quantity is not None:
            requested[name] = _parse_quantity(quantity, f"resources.{name}", maximum, setting)
    return Resources(**requested)


def _parse_quantity(value: object, field: str, maximum: str, setting: str) -> str:
    if not isinstance(value, str):
        raise InvalidTaskError(
            field,
            f"must be a Kubernetes quantity string such as 500m or 256Mi, got {_json_type(value)}",
        )
    try:
        parsers.quantity(value)
        amount = parsers.amount(value)
    except (parsers.Rejected, ValueError):
        raise InvalidTaskError(
            field,
            f"must be a Kubernetes quantity such as 500m, 0.5, 256Mi or 1Gi, "
            f"got '{_printable(value)}'",
        ) from None
    if amount <= Decimal(0):
        raise InvalidTaskError(field, f"must be more than 0, got '{value}'")
    if maximum and amount > parsers.amount(maximum):
        raise InvalidTaskError(field, f"must be at most {maximum} ({setting}), got '{value}'")
    return value.strip()
