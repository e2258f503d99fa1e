"""Everything that crosses Redis: task names, the Celery client, worker calls and job events."""
