"""Experiment trackers (a job spec's `integrations`): MLflow and Weights & Biases runs that follow a job.

`JobTrackers` (session.py) wraps one attempt in worker/job_runner.py; mlflow_run.py and wandb_run.py talk to
each tracker with the tenant's secrets; points.py is what they are sent. See docs/trackers.md.
"""

from worker.trackers.session import JobTrackers

__all__ = ["JobTrackers"]
