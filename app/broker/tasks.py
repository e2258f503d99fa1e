"""Every Celery task name, in one place: the API sends by name, the worker registers under the same names.

The API never imports worker code; these strings are the whole of what the two sides share about a task.
"""

TRAIN_TASK = "finetune.train"
GENERATE_TASK = "finetune.generate"
PREDICT_TASK = "finetune.predict"
EXPORT_TASK = "finetune.export"
EVALUATE_TASK = "finetune.evaluate"
SERVE_TASK = "finetune.serve"  # wakes the embedded serving backend: it drains app/broker/serving.py's queue
