"""Task messages: what is accepted, what is refused and with which words."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatcher.errors import InvalidTaskError
from dispatcher.messages.task import (
    Cancel,
    Resources,
    Task,
    TaskPolicy,
    parse_message,
    parse_task,
    peek_task_id,
)

VALID: dict[str, Any] = {
    "id": "t-1",
    "image": "localhost/testbox:1.0",
    "volume_mount_path": "/work",
}
DIGEST = "sha256:" + "a" * 64


def body(**changes: Any) -> bytes:
    """A valid task message with ``changes`` applied; a value of ``...`` removes the field."""
    document = {**VALID, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def refusal(raw: bytes | str, **policy: Any) -> InvalidTaskError:
    with pytest.raises(InvalidTaskError) as caught:
        parse_task(raw, TaskPolicy(**policy))
    return caught.value


def test_minimal_task_is_parsed() -> None:
    assert parse_task(body()) == Task(
        id="t-1", image="localhost/testbox:1.0", volume_mount_path="/work"
    )


def test_full_task_is_parsed() -> None:
    task = parse_task(
        body(working_dir="/work/run", cmd=["/bin/sh", "-c"], args=["echo hi", ""]),
    )

    assert task == Task(
        id="t-1",
        image="localhost/testbox:1.0",
        volume_mount_path="/work",
        working_dir="/work/run",
        args=("echo hi", ""),
        cmd=("/bin/sh", "-c"),
    )


def test_null_optional_fields_mean_not_set() -> None:
    task = parse_task(body(working_dir=None, cmd=None, args=None))

    assert (task.working_dir, task.cmd, task.args) == (None, None, None)


def test_str_body_and_utf8_bom_are_accepted() -> None:
    assert parse_task(body().decode()).id == "t-1"
    assert parse_task(b"\xef\xbb\xbf" + body()).id == "t-1"


def test_unknown_fields_are_ignored() -> None:
    task = parse_task(body(namespace="kube-system", privileged=True, hostPath="/", envFrom=["x"]))

    assert task == parse_task(body())


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(b"\xff{}", "message: is not UTF-8 text", id="not-utf8"),
        pytest.param(
            b"", "message: is not valid JSON: Expecting value at line 1 column 1", id="empty"
        ),
        pytest.param(
            b'{"id": "t-1",\n "image": }',
            "message: is not valid JSON: Expecting value at line 2 column 11",
            id="syntax-error",
        ),
        pytest.param(
            b'{"id": NaN}', "message: is not valid JSON: NaN is not a JSON value", id="nan"
        ),
        pytest.param(
            b'{"id": -Infinity}',
            "message: is not valid JSON: -Infinity is not a JSON value",
            id="infinity",
        ),
        pytest.param(
            b"[" * 5000 + b"]" * 5000,
            "message: is not valid JSON: it is nested too deeply",
            id="too-deep",
        ),
        pytest.param(
            b'{"id": ' + b"1" * 5000 + b"}",
            "message: is not valid JSON: a number has too many digits",
            id="huge-int",
        ),
        pytest.param(b"[]", "message: must be a JSON object, got array", id="array"),
        pytest.param(b'"t-1"', "message: must be a JSON object, got string", id="string"),
        pytest.param(b"1.5", "message: must be a JSON object, got number", id="number"),
        pytest.param(b"true", "message: must be a JSON object, got boolean", id="boolean"),
        pytest.param(b"null", "message: must be a JSON object, got null", id="null"),
    ],
)
def test_unreadable_message_is_refused(raw: bytes, error: str) -> None:
    refused = refusal(raw)

    assert str(refused) == error
    assert refused.task_id is None


def test_oversized_message_is_refused_before_parsing() -> None:
    raw = b"x" * 70000

    assert str(refusal(raw)) == (
        "message: is 70000 bytes; the limit is 65536 bytes (MAX_TASK_BYTES)"
    )
    assert str(refusal(body(), max_bytes=10)) == (
        f"message: is {len(body())} bytes; the limit is 10 bytes (MAX_TASK_BYTES)"
    )


ID_RULE = (
    "id: must be an RFC 1035 label: 1 to 63 lower-case letters, digits or '-', "
    "starting with a letter and ending with a letter or digit"
)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"id": ...}, "id: is required", id="id-missing"),
        pytest.param({"id": None}, "id: must be a string, got null", id="id-null"),
        pytest.param({"id": 7}, "id: must be a string, got number", id="id-number"),
        pytest.param({"id": True}, "id: must be a string, got boolean", id="id-boolean"),
        pytest.param({"id": ""}, "id: must not be empty", id="id-empty"),
        pytest.param({"id": "T-1"}, ID_RULE, id="id-upper-case"),
        pytest.param({"id": "1-t"}, ID_RULE, id="id-starts-with-digit"),
        pytest.param({"id": "t-"}, ID_RULE, id="id-ends-with-dash"),
        pytest.param({"id": "t.1"}, ID_RULE, id="id-dot"),
        pytest.param(
            {"id": "t" * 70}, "id: must be at most 63 characters, got 70", id="id-too-long"
        ),
    ],
)
def test_bad_id_is_refused_without_an_id(changes: dict[str, Any], error: str) -> None:
    refused = refusal(body(**changes))

    assert str(refused) == error
    assert refused.task_id is None


def test_63_character_id_is_accepted() -> None:
    assert parse_task(body(id="t" * 63)).id == "t" * 63


IMAGE_RULE = (
    "image: must be a container image reference like registry.example.com/team/app:1.0 "
    "(lower-case path, optional :tag and @sha256:digest)"
)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"image": ...}, "image: is required", id="image-missing"),
        pytest.param({"image": ["x"]}, "image: must be a string, got array", id="image-array"),
        pytest.param({"image": ""}, "image: must not be empty", id="image-empty"),
        pytest.param(
            {"image": "a" * 513},
            "image: must be at most 512 characters, got 513",
            id="image-too-long",
        ),
        pytest.param(
            {"image": "busybox latest"},
            "image: must not contain whitespace or control characters",
            id="image-space",
        ),
        pytest.param(
            {"image": "busybox\n"},
            "image: must not contain whitespace or control characters",
            id="image-newline",
        ),
        pytest.param({"image": "Library/Busybox"}, IMAGE_RULE, id="image-upper-case-path"),
        pytest.param({"image": "busybox:"}, IMAGE_RULE, id="image-empty-tag"),
        pytest.param({"image": "busybox@sha256:abc"}, IMAGE_RULE, id="image-short-digest"),
        pytest.param({"image": "-busybox"}, IMAGE_RULE, id="image-leading-dash"),
        pytest.param({"image": "registry.io//busybox"}, IMAGE_RULE, id="image-empty-component"),
        pytest.param(
            {"volume_mount_path": ...}, "volume_mount_path: is required", id="mount-missing"
        ),
        pytest.param(
            {"volume_mount_path": 1},
            "volume_mount_path: must be a string, got number",
            id="mount-number",
        ),
        pytest.param(
            {"volume_mount_path": ""}, "volume_mount_path: must not be empty", id="mount-empty"
        ),
        pytest.param(
            {"volume_mount_path": "work"},
            "volume_mount_path: must be an absolute path",
            id="mount-relative",
        ),
        pytest.param(
            {"volume_mount_path": "/"},
            "volume_mount_path: must not be the root directory '/'",
            id="mount-root",
        ),
        pytest.param(
            {"volume_mount_path": "//./"},
            "volume_mount_path: must not be the root directory '/'",
            id="mount-root-spelled-otherwise",
        ),
        pytest.param(
            {"volume_mount_path": "/work/../etc"},
            "volume_mount_path: must not contain a '..' segment",
            id="mount-dotdot",
        ),
        pytest.param(
            {"volume_mount_path": "/work:rw"},
            "volume_mount_path: must not contain ':'",
            id="mount-colon",
        ),
        pytest.param(
            {"volume_mount_path": "/work\x00"},
            "volume_mount_path: must not contain control characters",
            id="mount-nul",
        ),
        pytest.param(
            {"volume_mount_path": "/" + "w" * 1024},
            "volume_mount_path: must be at most 1024 characters, got 1025",
            id="mount-too-long",
        ),
        pytest.param({"working_dir": ""}, "working_dir: must not be empty", id="workdir-empty"),
        pytest.param(
            {"working_dir": 5}, "working_dir: must be a string, got number", id="workdir-number"
        ),
        pytest.param(
            {"working_dir": "run"}, "working_dir: must be an absolute path", id="workdir-relative"
        ),
        pytest.param(
            {"working_dir": "/run\n"},
            "working_dir: must not contain control characters",
            id="workdir-control",
        ),
        pytest.param(
            {"cmd": "/bin/sh"}, "cmd: must be an array of strings, got string", id="cmd-string"
        ),
        pytest.param(
            {"args": {"a": 1}}, "args: must be an array of strings, got object", id="args-object"
        ),
        pytest.param(
            {"args": ["a", "b", 3]}, "args[2]: must be a string, got number", id="args-item-number"
        ),
        pytest.param({"args": [None]}, "args[0]: must be a string, got null", id="args-item-null"),
        pytest.param(
            {"cmd": ["sh", False]}, "cmd[1]: must be a string, got boolean", id="cmd-item-boolean"
        ),
        pytest.param(
            {"args": ["a\x00b"]}, "args[0]: must not contain NUL characters", id="args-item-nul"
        ),
        pytest.param(
            {"args": ["x"] * 1025},
            "args: must have at most 1024 items, got 1025",
            id="args-too-many",
        ),
    ],
)
def test_bad_field_is_refused_with_the_task_id(changes: dict[str, Any], error: str) -> None:
    refused = refusal(body(**changes))

    assert str(refused) == error
    assert refused.task_id == "t-1"


@pytest.mark.parametrize(
    "image",
    [
        pytest.param("busybox", id="name-only"),
        pytest.param("busybox:1.36", id="tag"),
        pytest.param("library/busybox:latest", id="path"),
        pytest.param("docker.io/library/busybox:1.36.1-musl", id="registry"),
        pytest.param("localhost:5000/team/app_x:V1", id="registry-port-upper-case-tag"),
        pytest.param("Registry.Example.com/team/my-app__x.y", id="upper-case-registry"),
        pytest.param(f"ghcr.io/org/app@{DIGEST}", id="digest"),
        pytest.param(f"ghcr.io/org/app:1.0@{DIGEST}", id="tag-and-digest"),
    ],
)
def test_image_references_of_every_shape_are_accepted(image: str) -> None:
    assert parse_task(body(image=image)).image == image


def test_fields_are_checked_in_contract_order() -> None:
    raw = body(image="", volume_mount_path="rel", working_dir="rel", cmd="x", args="y")

    assert refusal(raw).field == "image"
    assert refusal(body(volume_mount_path="rel", cmd="x", args="y")).field == "volume_mount_path"
    assert refusal(body(cmd="x", args="y")).field == "cmd"


@pytest.mark.parametrize(
    ("image", "error"),
    [
        pytest.param(
            "evil.io/x:1",
            "image: 'evil.io/x:1' is not allowed; allowed prefixes: localhost/, docker.io/library/",
            id="other-registry",
        ),
        pytest.param(
            "docker.io/team/x",
            "image: 'docker.io/team/x' is not allowed; allowed prefixes: localhost/, "
            "docker.io/library/",
            id="other-path-same-registry",
        ),
    ],
)
def test_image_outside_the_allowlist_is_refused(image: str, error: str) -> None:
    prefixes = ("localhost/", "docker.io/library/")

    assert str(refusal(body(image=image), allowed_image_prefixes=prefixes)) == error


def test_image_inside_the_allowlist_is_accepted() -> None:
    task = parse_task(
        body(image="docker.io/library/busybox"),
        TaskPolicy(allowed_image_prefixes=["localhost/", "docker.io/library/"]),
    )

    assert task.image == "docker.io/library/busybox"


def test_to_json_is_the_canonical_document_with_only_set_fields() -> None:
    assert parse_task(body()).to_json() == VALID
    assert parse_task(body(args=["a"], cmd=[], working_dir="/w")).to_json() == {
        **VALID,
        "working_dir": "/w",
        "args": ["a"],
        "cmd": [],
    }


def test_digest_ignores_field_order_extras_and_nulls() -> None:
    one = parse_task(b'{"id":"t-1","image":"busybox","volume_mount_path":"/w","args":["\xc3\xa9"]}')
    other = parse_task(
        b'{"args":["\\u00e9"],"extra":1,"cmd":null,"volume_mount_path":"/w","image":"busybox","id":"t-1"}'
    )

    assert one.digest() == other.digest()
    assert len(one.digest()) == 64
    assert int(one.digest(), 16) >= 0


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"image": "busybox:2"}, id="image"),
        pytest.param({"args": ["a"]}, id="args-set"),
        pytest.param({"args": []}, id="args-empty-vs-unset"),
        pytest.param({"working_dir": "/work"}, id="working-dir"),
    ],
)
def test_digest_differs_for_different_tasks(changes: dict[str, Any]) -> None:
    assert parse_task(body(**changes)).digest() != parse_task(body()).digest()


HUGE = b'"' + b"x" * 100000 + b'"'
HUGE_ID_FIRST = b'{"id": "t-9", "args": [' + HUGE + b"]}"


@pytest.mark.parametrize(
    ("raw", "task_id"),
    [
        pytest.param(body(), "t-1", id="valid"),
        pytest.param(body(image=7), "t-1", id="invalid-task-readable-id"),
        pytest.param(body(id="Not_A_Label"), "Not_A_Label", id="invalid-id-still-read"),
        pytest.param(body().decode(), "t-1", id="str-body"),
        pytest.param(body(id="x" * 254), None, id="id-too-long-to-echo"),
        pytest.param(body(id=5), None, id="id-not-string"),
        pytest.param(b"[1]", None, id="not-object"),
        pytest.param(b"{", None, id="not-json"),
        pytest.param(b"\xff\xfe\x00", None, id="not-utf8"),
        pytest.param(b"[" * 100000, None, id="too-deep"),
        pytest.param(HUGE_ID_FIRST, "t-9", id="oversized-id-first"),
        pytest.param(HUGE_ID_FIRST.decode(), "t-9", id="oversized-str-body"),
        pytest.param(b'  {\n "image" : "a", "id":"t-9",' + HUGE, "t-9", id="oversized-id-second"),
        pytest.param(b'{"args": [' + HUGE + b'], "id": "t-9"}', None, id="oversized-id-after-cut"),
        pytest.param(b'{"id": 5, "x": ' + HUGE, None, id="oversized-id-not-string"),
        pytest.param(b'{"id" "t-9", ' + HUGE, None, id="oversized-not-json"),
        pytest.param(b"[" + HUGE, None, id="oversized-not-object"),
        pytest.param(b"[" * 200000, None, id="oversized-too-deep"),
    ],
)
def test_peek_task_id_reads_what_it_can_and_never_raises(
    raw: bytes | str, task_id: str | None
) -> None:
    assert peek_task_id(raw) == task_id


# --- the optional additions: env, timeout_seconds, resources -------------------------------------


def test_env_timeout_and_resources_are_parsed() -> None:
    task = parse_task(
        body(env={"B": "2", "A_1": ""}, timeout_seconds=30.0, resources={"cpu": "250m"})
    )

    assert task.env == {"B": "2", "A_1": ""}
    assert task.timeout_seconds == 30
    assert task.resources == Resources(cpu="250m")
    assert task.to_json() == {
        **VALID,
        "env": {"A_1": "", "B": "2"},
        "timeout_seconds": 30,
        "resources": {"cpu": "250m"},
    }


def test_a_task_without_the_additions_keeps_its_digest() -> None:
    # The hash of a task of the original contract must not change: Jobs made before still match.
    assert parse_task(body()).digest() == parse_task(body(env=None, resources=None)).digest()
    assert parse_task(body()).digest() != parse_task(body(env={})).digest()


@pytest.mark.parametrize(
    ("changes", "policy", "error"),
    [
        pytest.param(
            {"env": ["A=1"]}, {}, "env: must be an object of strings, got array", id="env-type"
        ),
        pytest.param(
            {"env": {"A": 1}}, {}, "env.A: must be a string, got number", id="env-value-type"
        ),
        pytest.param(
            {"env": {"1A": "x"}},
            {},
            "env.1A: names must be letters, digits and '_', not starting with a digit",
            id="env-name",
        ),
        pytest.param(
            {"env": {"TASK_ID": "other"}},
            {},
            "env.TASK_ID: is set by the dispatcher and cannot be overridden",
            id="env-reserved",
        ),
        pytest.param(
            {"env": {"A": "1", "B": "2", "C": "3"}},
            {"max_env_vars": 2},
            "env: must have at most 2 variables (TASK_MAX_ENV_VARS), got 3",
            id="env-count",
        ),
        pytest.param(
            {"env": {"A": "x" * 20}},
            {"max_env_bytes": 10},
            "env: names and values must total at most 10 bytes (TASK_MAX_ENV_BYTES), got 21",
            id="env-bytes",
        ),
        pytest.param(
            {"timeout_seconds": 0},
            {},
            "timeout_seconds: must be a whole number of seconds from 1 to 3600 "
            "(JOB_MAX_RUN_SECONDS), got 0",
            id="timeout-zero",
        ),
        pytest.param(
            {"timeout_seconds": 7200},
            {},
            "timeout_seconds: must be a whole number of seconds from 1 to 3600 "
            "(JOB_MAX_RUN_SECONDS), got 7200",
            id="timeout-over-the-maximum",
        ),
        pytest.param(
            {"timeout_seconds": "60"},
            {},
            "timeout_seconds: must be a whole number of seconds from 1 to 3600 "
            "(JOB_MAX_RUN_SECONDS), got string",
            id="timeout-type",
        ),
        pytest.param(
            {"timeout_seconds": 1.5},
            {},
            "timeout_seconds: must be a whole number of seconds from 1 to 3600 "
            "(JOB_MAX_RUN_SECONDS), got 1.5",
            id="timeout-fraction",
        ),
        pytest.param(
            {"timeout_seconds": True},
            {},
            "timeout_seconds: must be a whole number of seconds from 1 to 3600 "
            "(JOB_MAX_RUN_SECONDS), got boolean",
            id="timeout-boolean",
        ),
        pytest.param(
            {"resources": {"gpu": "1"}},
            {},
            "resources.gpu: is not a resource a task may request; allowed: cpu, memory",
            id="resources-unknown",
        ),
        pytest.param(
            {"resources": {"memory": "8Gi"}},
            {},
            "resources.memory: must be at most 4Gi (TASK_MAX_MEMORY), got '8Gi'",
            id="memory-over-the-maximum",
        ),
        pytest.param(
            {"resources": {"cpu": "3"}},
            {},
            "resources.cpu: must be at most 2 (TASK_MAX_CPU), got '3'",
            id="cpu-over-the-maximum",
        ),
        pytest.param(
            {"resources": {"cpu": "lots"}},
            {},
            "resources.cpu: must be a Kubernetes quantity such as 500m, 0.5, 256Mi or 1Gi, "
            "got 'lots'",
            id="cpu-not-a-quantity",
        ),
        pytest.param(
            {"resources": {"cpu": 1}},
            {},
            "resources.cpu: must be a Kubernetes quantity string such as 500m or 256Mi, got number",
            id="cpu-number",
        ),
        pytest.param(
            {"resources": {"memory": "0"}},
            {},
            "resources.memory: must be more than 0, got '0'",
            id="memory-zero",
        ),
        pytest.param(
            {"resources": "big"},
            {},
            "resources: must be an object with cpu and/or memory, got string",
            id="resources-type",
        ),
    ],
)
def test_additions_outside_the_policy_are_refused_naming_field_and_limit(
    changes: dict[str, Any], policy: dict[str, Any], error: str
) -> None:
    refused = refusal(body(**changes), **policy)

    assert str(refused) == error
    assert refused.task_id == "t-1"


def test_an_empty_maximum_means_no_limit() -> None:
    task = parse_task(body(resources={"memory": "64Gi"}), TaskPolicy(max_memory=""))

    assert task.resources == Resources(memory="64Gi")


# --- cancel requests ---------------------------------------------------------------------------


def test_a_cancel_request_is_parsed() -> None:
    assert parse_message(b'{"cancel": "t-1"}') == Cancel("t-1")
    assert parse_message(body()) == parse_task(body())


@pytest.mark.parametrize(
    ("raw", "error", "task_id"),
    [
        pytest.param(b'{"cancel": "T 1"}', "cancel: must be an RFC 1035 label", "T 1", id="bad"),
        pytest.param(b'{"cancel": 7}', "cancel: must be a string, got number", None, id="type"),
        pytest.param(b'{"cancel": ""}', "cancel: must not be empty", None, id="empty"),
    ],
)
def test_a_bad_cancel_request_names_the_cancel_field(
    raw: bytes, error: str, task_id: str | None
) -> None:
    with pytest.raises(InvalidTaskError) as caught:
        parse_message(raw)

    assert str(caught.value).startswith(error)
    assert caught.value.task_id == task_id
