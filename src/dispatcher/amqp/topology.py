"""Names on the wire: exchanges, queues and bindings from the settings (declared durable), and
the names of our Celery tasks."""

from __future__ import annotations

from kombu import Exchange, Queue

from dispatcher.config import Settings

SUBMIT_TASK = "dispatcher.submit"
FINALIZE_TASK = "dispatcher.finalize"
CANCEL_TASK = "dispatcher.cancel"


def task_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.task_exchange_name, type=settings.task_exchange_type, durable=True)


def task_queue(settings: Settings) -> Queue:
    return Queue(
        settings.task_queue_name,
        exchange=task_exchange(settings),
        routing_key=settings.task_routing_key,
        durable=True,
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
    )


def internal_queue(settings: Settings) -> Queue:
    """The Celery queue carrying the short submit and finalize tasks."""
    return Queue(settings.celery_queue_name, durable=True)


def progress_exchange(settings: Settings) -> Exchange | None:
    """The topic exchange of the progress events (routing key: the task id), or None when
    PROGRESS_EXCHANGE_NAME is empty."""
    if not settings.progress_exchange_name:
        return None
    return Exchange(settings.progress_exchange_name, type="topic", durable=True)
