"""A job's Weights & Biases run: online with the tenant's API key, or offline (FT_WANDB_MODE) under the job's dir.

Settings are passed to `wandb.init` explicitly, so neither WANDB_API_KEY nor ~/.netrc of the worker's host is ever
used for a tenant, and nothing of the worker process leaks in: no console capture (the worker's log lines), no
system metrics, machine facts, git state or code. The run id is the job id, so a later attempt resumes the run.
"""

from pathlib import Path
from typing import Any

from app.core.config import settings
from app.spec.integrations import WandbSettings
from worker.trackers.points import Step

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 130}


class WandbRun:
    kind = "wandb"

    def __init__(self, spec: WandbSettings, api_key: str | None, job_id: str, run_name: str, run_dir: Path):
        self.spec, self.job_id, self.run_name, self.run_dir = spec, job_id, run_name, run_dir
        self.mode = settings.wandb_mode
        if self.mode == "online" and not api_key:
            raise MissingKey("W&B online needs the tenant's wandb_api_key secret, which is not set")
        self._api_key = api_key if self.mode == "online" else None
        self.run: Any = None

    def start(self, config: dict[str, Any], resume: bool) -> tuple[dict[str, Any], bool]:
        """Open the run; `resume` is not needed: W&B knows (online) whether the job id's run exists already."""
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_settings = wandb.Settings(
            mode=self.mode,
            api_key=self._api_key,
            console="off",
            silent=True,
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            disable_git=True,
            disable_code=True,
            save_code=False,
        )
        self.run = wandb.init(
            project=self.spec.project,
            entity=self.spec.entity,
            name=self.run_name,
            tags=self.spec.tags or None,
            id=self.job_id,
            resume="allow",
            dir=str(self.run_dir),
            settings=run_settings,
            reinit="create_new",
        )
        if not self.run.resumed:  # a resumed run keeps its config: a retry after an OOM may have a smaller batch
            self.run.config.update(config)
        reference = {"type": self.kind, "run_id": self.run.id, "mode": self.mode}
        if self.mode == "online":
            reference["url"] = self.run.url
        else:
            reference["dir"] = str(Path(self.run.dir).parent)  # for `wandb sync`
        return reference, bool(self.run.resumed)

    def log(self, steps: list[Step]) -> None:
        for s in steps:
            self.run.log(s.values, step=s.step)

    def log_adapter(self, adapter_dir: Path) -> None:
        import wandb

        artifact = wandb.Artifact(f"adapter-{self.job_id}", type="model")
        artifact.add_dir(str(adapter_dir))
        self.run.log_artifact(artifact)

    def end(self, status: str | None) -> None:
        if status in ("queued", "running"):
            self.run.mark_preempting()  # sent back to the queue: the next attempt resumes this run
            self.run.finish(exit_code=0)
            return
        self.run.summary["status"] = status or "deleted"
        self.run.finish(exit_code=EXIT_CODES.get(status or "", 1))


class MissingKey(Exception):
    """W&B online and the tenant has no wandb_api_key (a job queued before the key was deleted)."""
