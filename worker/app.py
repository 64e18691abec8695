"""The Celery app of the workers: JSON only, late acks, bounded prefetch, priority queues.

`celery -A worker.app worker` and `newsq worker` both use this module-level `app`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger
from kombu.entity import Queue

from newsq.settings import Settings, get_settings
from producer import transport
from producer.contract import (
    BROKER_TRANSPORT_OPTIONS,
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    SERIALIZER,
    TRAIN_QUEUE,
    TRAIN_TASK,
)
from worker import serializer

# kombu's Redis transport, with a fetch that cannot lose a message to a SIGKILL (worker/broker.py)
WORKER_TRANSPORT = "worker.broker:Transport"


def create_app(settings: Settings) -> Celery:
    serializer.install()
    restore_interval = max(1, min(10, settings.visibility_timeout // 4))
    app = Celery(
        "newsq",
        broker=transport.broker_url(settings.broker_url, WORKER_TRANSPORT),
        include=["worker.tasks", "worker.train_task"],
        events="worker.events:Events",
    )
    app.conf.update(
        # Contract: JSON only; a pickled message is refused before it is deserialized.
        task_serializer=SERIALIZER,
        accept_content=[SERIALIZER],
        result_accept_content=[SERIALIZER],
        # Results live in SQL, not in a result backend.
        task_ignore_result=True,
        # At-least-once: ack only after the task returned, i.e. after its rows were committed.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per thread until the worker is ready; then worker/prefetch.py sizes the
        # credit by the articles per message.
        worker_prefetch_multiplier=1,
        # Celery's thread pool, whose warm shutdown waits for the messages in hand (worker/pool.py)
        worker_pool="worker.pool:TaskPool",
        broker_transport=WORKER_TRANSPORT,
        broker_transport_options={
            **BROKER_TRANSPORT_OPTIONS,
            "visibility_timeout": settings.visibility_timeout,
            # kombu sweeps for messages of dead workers every interval x throttle seconds
            # (100 s by default); sweep a few times per visibility timeout instead.
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": 1,
            # A sweep holds a Redis lock that expires after 300 s by default: a worker killed
            # during a sweep would stop every other worker from restoring anything for 5 min.
            "unacked_mutex_expire": 2 * restore_interval + 5,
        },
        broker_connection_retry_on_startup=True,
        task_queues=(
            Queue(CLASSIFY_QUEUE, routing_key=CLASSIFY_QUEUE),
            Queue(TRAIN_QUEUE, routing_key=TRAIN_QUEUE),
        ),
        task_default_queue=CLASSIFY_QUEUE,
        task_routes={
            CLASSIFY_TASK: {"queue": CLASSIFY_QUEUE},
            TRAIN_TASK: {"queue": TRAIN_QUEUE},
        },
        # Flower and `celery events` see every task (Flower also enables events when it starts).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=True,
        # Malformed messages leave a reject row instead of only a log line.
        worker_consumer="worker.consumer:RejectingConsumer",
    )
    return app


# Celery's loggers of one INFO line per message: "Received task ..." and "Task ... succeeded".
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@after_setup_logger.connect
def _quiet_task_lines(**_: Any) -> None:
    """Unless NEWSQ_LOG_TASKS: those lines only at WARNING (a failure is still logged, by Celery
    at ERROR and by the task before a retry). With one-article messages they were a fifth of
    a worker's time (null model: 1,298 / 1,194 -> 1,639 / 1,468 messages/s without them), 64
    task threads taking turns at the log handler's lock. Celery reads the level when it builds
    a task's tracer and the consumer's strategy, after this signal."""
    if not get_settings().log_tasks:
        for name in TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


app = create_app(get_settings())
