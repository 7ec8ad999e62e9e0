"""A Python client for the people and services that submit work: sync and asyncio.

    from dispatcher.client import Client

    with Client.from_env() as client:
        response = client.run({"id": "hello-1", "image": "busybox:1.36",
                               "volume_mount_path": "/work", "cmd": ["echo", "hi"]}, timeout=120)
        print(response.exit, response.output)

A task (a :class:`~dispatcher.messages.task.Task` or a JSON-like dict) is checked with the same
rules and the same operator limits (from the same environment) as the worker applies, so a bad
task fails here with the same one-line :class:`~dispatcher.errors.InvalidTaskError` before it is
sent. Each submitted task gets a private, server-named, exclusive reply queue: the response comes
back there by ``reply_to`` + ``correlation_id``, and when ``PROGRESS_EXCHANGE_NAME`` is set the
same queue is bound to the progress exchange with the task id, so a handle's ``events()`` yields
the task's ``queued``, ``running`` (``retrying``, for a task with ``retries``) and final events.
A task that ran more than once has its runs in the response's ``attempts``
(:class:`~dispatcher.messages.response.Attempt`: exit, error, node, start, end). A handle's
``cancel()`` sends ``{"cancel": id}`` with the same ``reply_to`` and the correlation id
``<correlation_id>.cancel``, so the task's own answer and the cancel's answer are told apart.

:class:`Client` (:mod:`.sync`) blocks; one per thread. :class:`AsyncClient` (:mod:`.aio`) offers
the same calls as coroutines on an asyncio AMQP connection of its own. Both share :mod:`.inbox`:
the checks before sending and the sorting of what comes back, with no I/O.
"""

from dispatcher.client.aio import AsyncClient, AsyncTaskHandle
from dispatcher.client.sync import Client, TaskHandle

__all__ = ["AsyncClient", "AsyncTaskHandle", "Client", "TaskHandle"]
