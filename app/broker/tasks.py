"""Every Celery task name, in one place: the API sends by name, the worker registers under the same names.

The API never imports worker code; these strings are the whole of what the two sides share about a task.
"""

TRAIN_TASK = "finetune.train"
GENERATE_TASK = "finetune.generate"
PREDICT_TASK = "finetune.predict"
EXPORT_TASK = "finetune.export"
EVALUATE_TASK = "finetune.evaluate"
SERVE_TASK = "finetune.serve"  # wakes the embedded serving backend: it drains app/broker/serving.py's queue

# A message header, not an argument: the request id of the API call that led to the task (X-Request-ID), so the
# worker's log lines can be found by it too. Set by app/observability/request_ids.py; untrusted on the way in.
REQUEST_ID_HEADER = "ft_request_id"
