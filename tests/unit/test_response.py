"""Response messages: exactly the fields that apply, compact UTF-8 JSON, one-line errors."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.errors import (
    InvalidTaskError,
    KubeError,
    NotFoundError,
    TaskConflictError,
    TransientKubeError,
)
from dispatcher.messages.response import Response, error_response


@pytest.mark.parametrize(
    ("response", "document"),
    [
        pytest.param(
            Response(id="t-1", output="hi\n", exit=0),
            {"id": "t-1", "output": "hi\n", "exit": 0},
            id="success",
        ),
        pytest.param(
            Response(id="t-1", output="", exit=3),
            {"id": "t-1", "output": "", "exit": 3},
            id="workload-failed-no-output",
        ),
        pytest.param(
            Response(id="t-1", error="deadline exceeded", output="partial"),
            {"id": "t-1", "output": "partial", "error": "deadline exceeded"},
            id="error-with-output",
        ),
        pytest.param(
            Response(error="message: is not UTF-8 text"),
            {"error": "message: is not UTF-8 text"},
            id="no-id",
        ),
    ],
)
def test_to_json_has_only_the_fields_that_apply(
    response: Response, document: dict[str, Any]
) -> None:
    assert response.to_json() == document


def test_fields_come_in_contract_order() -> None:
    response = Response(error="e", exit=1, output="o", id="t-1")

    assert list(response.to_json()) == ["id", "output", "exit", "error"]


def test_encode_is_compact_utf8_json() -> None:
    response = Response(id="t-1", output='{"a": "é ✓"}\n', exit=0)

    assert response.encode() == '{"id":"t-1","output":"{\\"a\\": \\"é ✓\\"}\\n","exit":0}'.encode()


def test_encode_never_fails_on_lone_surrogates() -> None:
    assert Response(output="\udcff").encode() == b'{"output":"?"}'


@pytest.mark.parametrize(
    ("exc", "task_id", "expected"),
    [
        pytest.param(
            InvalidTaskError("args[2]", "must be a string, got number", "t-1"),
            None,
            Response(id="t-1", error="args[2]: must be a string, got number"),
            id="invalid-task-carries-its-id",
        ),
        pytest.param(
            InvalidTaskError("id", "is required"),
            None,
            Response(error="id: is required"),
            id="invalid-task-without-id",
        ),
        pytest.param(
            InvalidTaskError("id", "must be a string, got number"),
            "peeked",
            Response(id="peeked", error="id: must be a string, got number"),
            id="explicit-id-wins",
        ),
        pytest.param(
            TaskConflictError("t-1"),
            None,
            Response(
                id="t-1",
                error="id: a different task with id 't-1' is running or was just answered; "
                "use a new id",
            ),
            id="conflict",
        ),
        pytest.param(
            NotFoundError("persistentvolumeclaim 'worker-pv-claim' not found", 404),
            "t-1",
            Response(id="t-1", error="persistentvolumeclaim 'worker-pv-claim' not found"),
            id="kube-error",
        ),
        pytest.param(
            TransientKubeError("Kubernetes API unavailable:\n  connection refused"),
            "t-1",
            Response(id="t-1", error="Kubernetes API unavailable: connection refused"),
            id="multi-line-text-folded",
        ),
        pytest.param(
            "image 'x' could not be pulled: not found",
            "t-1",
            Response(id="t-1", error="image 'x' could not be pulled: not found"),
            id="plain-text",
        ),
    ],
)
def test_error_response_carries_our_one_line_text(
    exc: InvalidTaskError | TaskConflictError | KubeError | str,
    task_id: str | None,
    expected: Response,
) -> None:
    assert error_response(exc, task_id) == expected
