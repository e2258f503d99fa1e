"""Service overhead: what progress reporting costs a training step, and how soon a warm worker starts a queued job."""

import time
from typing import Any

from bench.service import Service


def insert_job(tenant: str, **fields: Any) -> str:
    """A job row written straight into SQL (for measurements that need a job but no training)."""
    from app.core.db import session_scope
    from app.models import Job

    with session_scope() as session:
        job = Job(tenant=tenant, name="bench", spec={}, **fields)
        session.add(job)
        session.flush()
        return job.id


def reporting_cost(tenant: str, steps: int = 300) -> dict[str, float]:
    """Per-step cost of ProgressCallback + JobReporter (real Redis and SQL), on and off the training thread.

    Drives the callback as the Trainer does at every step with logging_steps=1 (on_step_end, then on_log),
    so `in_step_ms` is what the training thread waits for; `cpu_ms` adds the reporter thread's SQL and
    Redis writes, which share the machine with training.
    """
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.report import JobReporter
    from worker.training.progress import ProgressCallback

    args = TrainingArguments(output_dir="/tmp/bench-reporting", use_cpu=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    state.max_steps = steps
    job_id = insert_job(tenant, status="running", worker="bench-overhead")
    callback = ProgressCallback(JobReporter(job_id, "bench-overhead"))
    callback.on_train_begin(args, state, control)
    cpu_started, in_step = time.process_time(), 0.0
    for step in range(1, steps + 1):
        state.global_step, state.epoch = step, step / steps
        state.num_input_tokens_seen += 1500
        started = time.perf_counter()
        callback.on_step_end(args, state, control)
        logs = {"loss": 2.0 - step / steps, "learning_rate": 1e-4, "grad_norm": 0.5, "mean_token_accuracy": 0.5}
        callback.on_log(args, state, control, logs=logs)
        in_step += time.perf_counter() - started
        time.sleep(0.01)  # a (very short) training step, so the reporter thread batches as it does in a job
    callback.report.close()
    cpu = time.process_time() - cpu_started
    return {"in_step_ms": 1000 * in_step / steps, "cpu_ms": 1000 * cpu / steps, "steps": steps}


def model_load_seconds(spec: dict[str, Any]) -> float:
    """Time to load the 4-bit base and add LoRA in a process that has torch imported, as a warm worker has."""
    from app.spec.job import JobSpec
    from worker.training import model as modelling

    job_spec = JobSpec.model_validate(spec)
    started = time.monotonic()
    model = modelling.add_lora(modelling.load_model(job_spec), job_spec)
    modelling.load_tokenizer(job_spec.base_model)
    elapsed = time.monotonic() - started
    del model
    return elapsed


def warm_start(service: Service, spec: dict[str, Any]) -> dict[str, float]:
    """Submit a 2-step job to an idle worker: seconds to `running` and to its first step being visible."""
    spec = {**spec, "training": {**spec["training"], "max_steps": 2}}
    job_id, submitted = service.submit(spec)
    service.follow(job_id, until={"running", "succeeded"}, step=1)
    running = time.monotonic() - submitted
    service.follow(job_id, until={"succeeded"}, step=1)
    first_step = time.monotonic() - submitted
    service.follow(job_id)
    return {"to_running_s": running, "to_first_step_s": first_step}
