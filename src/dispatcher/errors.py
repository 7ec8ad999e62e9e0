"""The one exception tree of the dispatcher.

Every error the dispatcher raises on purpose is a :class:`DispatcherError`, and its ``str()`` is a
short, one-line, human-readable text that may be sent to users as a response ``error``. The
classes say what to do next: a bad setting stops start-up, a bad task is answered at once, a
temporary Kubernetes error is retried, a permanent one is answered at once::

    DispatcherError
    ├── ConfigError(variable, reason)           a setting is wrong: stop start-up
    ├── InvalidTaskError(field, reason, task_id)  a task message is wrong: answer with an error
    ├── TaskConflictError(task_id)              another task runs (or just ran) under this id
    └── KubeError(message, status)              the Kubernetes API refused or failed
        ├── TransientKubeError                  429, 5xx, connection refused/reset, timeouts: retry
        ├── PermanentKubeError                  any other 4xx: answer with an error at once
        │   ├── ForbiddenError                  403
        │   ├── NotFoundError                   404
        │   └── InvalidSpecError                422
        └── ConflictError                       409: the object exists or changed meanwhile

The constructor arguments are kept as attributes (``e.field``, ``e.reason``, ``e.status``, ...),
and every exception survives pickling (Celery ships exceptions between processes).
"""

from __future__ import annotations

from typing import Any


class DispatcherError(Exception):
    """Base class of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """A setting from the environment is invalid; ``str(e)`` names the variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.variable, self.reason)


class InvalidTaskError(DispatcherError):
    """A task message is invalid; ``str(e)`` names the field and the rule it broke.

    ``task_id`` is the task's id when it could be read as a valid id, so that the error response
    can carry it; otherwise ``None``.
    """

    def __init__(self, field: str, reason: str, task_id: str | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.field, self.reason, self.task_id)


class TaskConflictError(DispatcherError):
    """A different task (other content, same id) runs, or was just answered, under this id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"id: a different task with id '{task_id}' is running or was just answered; "
            "use a new id"
        )
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.task_id,)


class KubeError(DispatcherError):
    """The Kubernetes API refused a request or could not be reached.

    ``status`` is the HTTP status when there was a response, else ``None``.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message, self.status)


class TransientKubeError(KubeError):
    """A temporary failure (429, 5xx, connection refused or reset, timeout): retry with backoff."""


class PermanentKubeError(KubeError):
    """A request that will not succeed when repeated (4xx): answer with an error at once."""


class ForbiddenError(PermanentKubeError):
    """403: the dispatcher's service account may not do this."""


class NotFoundError(PermanentKubeError):
    """404: the object (or its namespace) does not exist."""


class InvalidSpecError(PermanentKubeError):
    """422: the API server rejected the object as invalid."""


class ConflictError(KubeError):
    """409: the object already exists, or its resourceVersion changed meanwhile."""


class ClientError(DispatcherError):
    """A failure on the producer's side, in :mod:`dispatcher.client`."""


class ResponseTimeout(ClientError):
    """No response arrived within the time the caller was willing to wait; the task itself
    goes on (cancel it to stop it)."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"no response for task {task_id} within {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id, self.timeout))
