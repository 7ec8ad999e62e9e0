"""Names on the wire: exchanges, queues and bindings from the settings (declared durable, of
type QUEUE_TYPE), and the names of our Celery tasks.

With quorum queues Celery sends a task with a countdown through RabbitMQ's own delayed delivery
(its `celery_delayed_*` exchanges and queues), which needs the internal queue behind a topic
exchange; classic queues keep the direct exchange Celery gives them by default.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from dispatcher.config import Settings

SUBMIT_TASK = "dispatcher.submit"
FINALIZE_TASK = "dispatcher.finalize"
CANCEL_TASK = "dispatcher.cancel"
CELERY_DELAYED_DELIVERY = "celery_delayed_delivery"
"""The exchange through which Celery's delayed delivery hands a due task back (quorum queues)."""
DELAYED_UNROUTABLE = "celery_delayed_unroutable"
"""A queue that takes, and drops at once, every message leaving Celery's delayed delivery."""


def task_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.task_exchange_name, type=settings.task_exchange_type, durable=True)


def queue_arguments(settings: Settings) -> dict[str, str]:
    """Declared on every queue of ours, so a queue of another type is found at start-up."""
    return {"x-queue-type": settings.queue_type}


def task_queue(settings: Settings) -> Queue:
    return _on_task_exchange(settings, settings.task_queue_name, settings.task_routing_key)


def control_queue(settings: Settings) -> Queue | None:
    """Cancel requests, bound to the task exchange with CONTROL_ROUTING_KEY; None on a fanout or
    headers task exchange (cancels then travel on the task queue)."""
    if not settings.has_control_queue:
        return None
    return _on_task_exchange(settings, settings.control_queue_name, settings.control_routing_key)


def _on_task_exchange(settings: Settings, name: str, routing_key: str) -> Queue:
    return Queue(
        name,
        exchange=task_exchange(settings),
        routing_key=routing_key,
        durable=True,
        queue_arguments=queue_arguments(settings),
    )


def response_exchange(settings: Settings) -> Exchange:
    return Exchange(
        settings.response_exchange_name, type=settings.response_exchange_type, durable=True
    )


def response_queue(settings: Settings) -> Queue:
    """Declared at start-up so responses are kept even before anyone listens."""
    return Queue(
        settings.response_queue_name,
        exchange=response_exchange(settings),
        routing_key=settings.response_routing_key,
        durable=True,
        queue_arguments=queue_arguments(settings),
    )


def internal_queue(settings: Settings) -> Queue:
    """The Celery queue carrying the short submit, finalize and cancel tasks."""
    name = settings.celery_queue_name
    if settings.queue_type == "classic":
        return Queue(name, durable=True, queue_arguments=queue_arguments(settings))
    return Queue(
        name,
        exchange=Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=queue_arguments(settings),
    )


def delayed_sink() -> Queue:
    """Celery's delay queues dead-letter *at least once*: a message whose last hop routes to no
    queue (its internal queue was deleted, say) stays in its delay queue, and enough of them
    stop every delayed message of the vhost behind them. Bound to the last hop with `#`, this
    quorum queue (it holds nothing: `x-max-length` 0) makes every due message routable: it also
    reaches its own queue, when there is one."""
    return Queue(
        DELAYED_UNROUTABLE,
        exchange=Exchange(CELERY_DELAYED_DELIVERY, type="topic", durable=True),
        routing_key="#",
        durable=True,
        queue_arguments={"x-queue-type": "quorum", "x-max-length": 0},
    )


def our_queues(settings: Settings) -> list[Queue]:
    """Every queue the dispatcher declares, in the order start-up checks them."""
    queues = [task_queue(settings), control_queue(settings), response_queue(settings)]
    return [queue for queue in queues if queue is not None] + [internal_queue(settings)]


def progress_exchange(settings: Settings) -> Exchange | None:
    """The topic exchange of the progress events (routing key: the task id), or None when
    PROGRESS_EXCHANGE_NAME is empty."""
    if not settings.progress_exchange_name:
        return None
    return Exchange(settings.progress_exchange_name, type="topic", durable=True)
