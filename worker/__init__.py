"""Everything that runs inside a newsq worker: the Celery app, batcher, model runtime, tasks."""
