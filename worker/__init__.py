"""The training worker: Celery app, tasks, progress reporting and the training recipe."""
