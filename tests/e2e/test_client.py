"""The Python client, sync and asyncio, against the real broker and a real worker."""

from __future__ import annotations

import asyncio
import time

import pytest
from harness.stack import Broker

from dispatcher.client import AsyncClient, Client
from dispatcher.config import Settings
from dispatcher.errors import InvalidTaskError, ResponseTimeout
from dispatcher.messages.response import Response
from tests.e2e.test_dispatch import Dispatcher, task

pytestmark = pytest.mark.cluster
PROGRESS = "e2e.client.progress"


def settings_of(broker: Broker) -> Settings:
    return Settings.from_env(broker.instance.env())


def test_run_returns_the_response(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo $GREETING; exit 3", env={"GREETING": "hi"})

    with Client(settings_of(broker)) as client:
        response = client.run(sent, timeout=90)

    assert response == Response(id=sent["id"], output="hi\n", exit=3)
    assert broker.no_more_responses(1) == []  # on the client's own queue only


def test_a_task_outside_the_limits_fails_before_it_is_sent(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    with (
        Client(settings_of(broker)) as client,
        pytest.raises(InvalidTaskError, match=r"^timeout_seconds: must be a whole number"),
    ):
        client.submit(task("true", timeout_seconds=10**9))
    assert broker.consumers(broker.task_queue.name) == 1


def test_a_wait_that_times_out_raises_and_the_task_goes_on(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("sleep 3; echo late")
    with Client(settings_of(broker)) as client, client.submit(sent) as handle:
        with pytest.raises(
            ResponseTimeout, match=f"no response for task {sent['id']} within 0.5 s"
        ):
            handle.result(timeout=0.5)
        assert handle.result(timeout=90) == Response(id=sent["id"], output="late\n", exit=0)


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME=PROGRESS)
def test_submit_shows_progress_then_the_result(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("sleep 2; echo done")
    with Client(settings_of(broker)) as client, client.submit(sent) as handle:
        events = list(handle.events(timeout=90))
        response = handle.result(timeout=30)

    assert [event.state for event in events] == ["queued", "running", "succeeded"]
    assert events[1].node
    assert response == Response(id=sent["id"], output="done\n", exit=0)


def test_cancel_from_the_handle_and_for_an_unknown_id(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo started; sleep 300")
    with Client(settings_of(broker)) as client, client.submit(sent) as handle:
        time.sleep(6)  # let the pod start and print
        answer = handle.cancel(timeout=60)
        result = handle.result(timeout=30)
        unknown = client.cancel("no-such-task", timeout=30)

    assert answer == result  # the same answer, on the task's route and on the cancel's
    assert result.error == "cancelled"
    assert result.output in ("started\n", None)  # None only if the pod had not started yet
    assert unknown.error is not None
    assert unknown.error.startswith("cancelled: task 'no-such-task' had no Job yet")


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME=PROGRESS)
def test_the_async_client_runs_submits_follows_and_cancels(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    first, second, doomed = task("echo one"), task("sleep 1; echo two"), task("sleep 300")

    async def scenario() -> tuple[list[Response], list[str], Response]:
        async with AsyncClient(settings_of(broker)) as client:
            # Two runs at once on one client: the event loop is never blocked.
            responses = await asyncio.gather(
                client.run(first, timeout=90), client.run(second, timeout=90)
            )
            handle = await client.submit(doomed)
            states = []
            async for event in handle.events(timeout=60):
                states.append(event.state)
                if event.state == "running":
                    break
            cancelled = await handle.cancel(timeout=60)
            await handle.close()
            return list(responses), states, cancelled

    responses, states, cancelled = asyncio.run(scenario())

    assert responses == [
        Response(id=first["id"], output="one\n", exit=0),
        Response(id=second["id"], output="two\n", exit=0),
    ]
    assert states == ["queued", "running"]
    assert cancelled.id == doomed["id"]
    assert cancelled.error == "cancelled"


def test_the_async_client_awaits_a_cancel_and_another_tasks_answer_together(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    slow, doomed = task("sleep 8; echo slow"), task("echo up; sleep 300")

    async def scenario() -> tuple[Response, Response, Response, Response]:
        async with (
            AsyncClient(settings_of(broker)) as client,
            await client.submit(slow) as waiting,
            await client.submit(doomed) as handle,
        ):
            with pytest.raises(ResponseTimeout, match=f"^no response for task {slow['id']}"):
                await waiting.result(timeout=0.5)
            await asyncio.sleep(5)  # let the doomed pod start and print
            cancelled, unknown, answer = await asyncio.gather(
                handle.cancel(timeout=60),
                client.cancel("no-such-async-task", timeout=60),
                waiting.result(timeout=90),
            )
            own = await handle.result(timeout=30)
        return cancelled, unknown, answer, own

    cancelled, unknown, answer, own = asyncio.run(scenario())

    assert answer == Response(id=slow["id"], output="slow\n", exit=0)
    assert cancelled == own  # the same answer on the task's route and on the cancel's
    assert own.id == doomed["id"]
    assert own.error == "cancelled"
    assert own.output in ("up\n", None)
    assert unknown.error is not None
    assert unknown.error.startswith("cancelled: task 'no-such-async-task' had no Job yet")
    assert broker.no_more_responses(1) == []  # all on the client's own queues
