"""The exception tree: texts users see, attributes callers use, classes that decide retries."""

from __future__ import annotations

import pickle

import httpx2
import pytest

from dispatcher.errors import (
    ConfigError,
    ConflictError,
    DispatcherError,
    ForbiddenError,
    InvalidSpecError,
    InvalidTaskError,
    KubeError,
    NotFoundError,
    PermanentKubeError,
    TaskConflictError,
    TransientKubeError,
)
from dispatcher.kube.client import error_from_response


@pytest.mark.parametrize(
    ("error", "text"),
    [
        pytest.param(
            ConfigError("AMQP_PORT", "must be a whole number from 1 to 65535, got 'abc'"),
            "AMQP_PORT: must be a whole number from 1 to 65535, got 'abc'",
            id="config",
        ),
        pytest.param(
            InvalidTaskError("image", "is required", "t-1"), "image: is required", id="invalid-task"
        ),
        pytest.param(
            TaskConflictError("t-1"),
            "id: a different task with id 't-1' is running or was just answered; use a new id",
            id="conflict",
        ),
        pytest.param(
            NotFoundError("namespace 'x' not found", 404), "namespace 'x' not found", id="kube"
        ),
    ],
)
def test_error_text_is_the_one_line_users_see(error: DispatcherError, text: str) -> None:
    assert str(error) == text


def test_errors_keep_their_arguments_as_attributes() -> None:
    config = ConfigError("AMQP_PORT", "bad")
    task = InvalidTaskError("args[2]", "must be a string, got number", "t-1")
    conflict = TaskConflictError("t-1")
    kube = TransientKubeError("API unavailable", 503)

    assert (config.variable, config.reason) == ("AMQP_PORT", "bad")
    assert (task.field, task.reason, task.task_id) == (
        "args[2]",
        "must be a string, got number",
        "t-1",
    )
    assert conflict.task_id == "t-1"
    assert (kube.message, kube.status) == ("API unavailable", 503)


def test_invalid_task_error_has_no_task_id_unless_given() -> None:
    assert InvalidTaskError("id", "is required").task_id is None


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        pytest.param(ConfigError, DispatcherError, id="config"),
        pytest.param(InvalidTaskError, DispatcherError, id="invalid-task"),
        pytest.param(TaskConflictError, DispatcherError, id="task-conflict"),
        pytest.param(KubeError, DispatcherError, id="kube"),
        pytest.param(TransientKubeError, KubeError, id="transient"),
        pytest.param(PermanentKubeError, KubeError, id="permanent"),
        pytest.param(ForbiddenError, PermanentKubeError, id="403"),
        pytest.param(NotFoundError, PermanentKubeError, id="404"),
        pytest.param(InvalidSpecError, PermanentKubeError, id="422"),
        pytest.param(ConflictError, KubeError, id="409"),
    ],
)
def test_exception_tree(cls: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(cls, parent)


@pytest.mark.parametrize(
    "cls", [pytest.param(TransientKubeError, id="transient"), pytest.param(ConflictError, id="409")]
)
def test_retryable_kube_errors_are_not_permanent(cls: type[Exception]) -> None:
    assert not issubclass(cls, PermanentKubeError)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ConfigError("AMQP_PORT", "bad"), id="config"),
        pytest.param(InvalidTaskError("image", "is required", "t-1"), id="invalid-task"),
        pytest.param(TaskConflictError("t-1"), id="task-conflict"),
        pytest.param(InvalidSpecError("Job is invalid", 422), id="kube-subclass"),
        pytest.param(TransientKubeError("connection refused"), id="kube-without-status"),
    ],
)
def test_errors_survive_pickling_between_processes(error: DispatcherError) -> None:
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        pytest.param(401, TransientKubeError, id="401-token-rotated"),
        pytest.param(429, TransientKubeError, id="429"),
        pytest.param(503, TransientKubeError, id="503"),
        pytest.param(400, PermanentKubeError, id="400"),
        pytest.param(403, ForbiddenError, id="403"),
        pytest.param(404, NotFoundError, id="404"),
        pytest.param(409, ConflictError, id="409"),
        pytest.param(422, InvalidSpecError, id="422"),
    ],
)
def test_api_answers_map_to_the_error_that_decides_the_retry(
    status: int, cls: type[KubeError]
) -> None:
    answer = httpx2.Response(status, json={"kind": "Status", "message": "the server's reason"})

    error = error_from_response(answer, "create Job t-1")

    assert type(error) is cls
    assert str(error) == f"create Job t-1: the server's reason (HTTP {status})"
    assert error.status == status
