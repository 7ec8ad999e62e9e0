"""The Celery app: JSON only, sealed internal messages, confirmed publishes, late acks, our
bootsteps and tasks."""

from __future__ import annotations

from celery import Celery

from dispatcher.amqp.topology import internal_queue
from dispatcher.config import Settings
from dispatcher.worker.consumer import TaskConsumerStep
from dispatcher.worker.runtime import Runtime
from dispatcher.worker.seal import SealedTask
from dispatcher.worker.steps import HealthStep, JobWatchStep, StatusStep
from dispatcher.worker.tasks import register_tasks


def create_app(settings: Settings) -> Celery:
    # Our tasks seal what they send and run only what carries a valid seal (worker.seal).
    app = Celery(
        "dispatcher", broker=settings.broker_url, set_as_current=False, task_cls=SealedTask
    )
    internal = internal_queue(settings)
    app.conf.update(
        # JSON only: pickle is neither sent nor accepted anywhere.
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # Every publish (tasks, retries, responses) waits for the broker's confirm.
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        # A channel error (a broker node gone, a consumer timed out) restarts the consumer
        # instead of stopping the worker; held messages go back to the broker with the channel.
        broker_channel_error_retry=True,
        broker_use_ssl=settings.broker_ssl or False,  # AMQP_TLS: verified certificate and name
        broker_heartbeat=30,
        task_queues=[internal],
        task_default_queue=internal.name,
        # Celery's default exchange is the internal queue's own (topic with quorum queues, for
        # delayed delivery), never a second declaration of that name with another type.
        task_default_exchange=internal.exchange.name or internal.name,
        task_default_exchange_type=internal.exchange.type or "direct",
        task_default_routing_key=internal.routing_key or internal.name,
        task_default_delivery_mode="persistent",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        task_send_sent_event=False,
    )
    runtime = Runtime(app, settings)
    app.dispatcher = runtime
    register_tasks(app)
    app.steps["consumer"].add(TaskConsumerStep.for_runtime(runtime))
    app.steps["worker"].add(JobWatchStep)
    app.steps["worker"].add(HealthStep)
    app.steps["worker"].add(StatusStep)
    return app
