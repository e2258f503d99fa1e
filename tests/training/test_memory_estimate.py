"""The memory estimate against reality on the CPU: real training of the tiny test model, peak resident memory.

A child process trains with the recipe; when training begins its peak-RSS counter is reset (/proc/self/clear_refs),
and the peak a few steps later minus the RSS at that moment is what training added: gradients, optimizer states,
activations, the loss head and scratch. glibc is told to return every block over 64 KiB to the system at once
(M_MMAP_THRESHOLD), so the peak follows live tensors, as torch.cuda.max_memory_allocated() does on a GPU.
`python -m tests.training.test_memory_estimate [MODEL_DIR...]` prints the comparison table of docs/estimates.md.
"""

import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from app.fleet.estimate import CPU, memory, peak_batch
from app.fleet.model_shape import ModelShape
from app.spec.job import JobSpec

TOLERANCE = 0.20  # |estimate / measured - 1|; docs/estimates.md says why
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "books", "time", "love", "good", "bad")
CASES = [  # (label, spec overrides): the tiny model's rows are all cut to exactly max_seq_length tokens
    # TRL's own LM head (cpu_kernels off): its tiles set this case's peak, as on a GPU. With the lean CPU head the
    # peak is the backward's gradients in flight, which the estimate adds on top of every activation still held:
    # conservative there (docs/estimates.md).
    (
        "padded, no checkpointing, TRL's LM head",
        {"training": {"gradient_checkpointing": False, "padding_free": False, "cpu_kernels": False}},
    ),
    ("padding-free + checkpointing (defaults)", {"training": {}}),
]


def job_spec(model: str, overrides: dict[str, Any], batch: int, seq: int) -> JobSpec:
    base = {"base_model": model, "dataset": "ds_" + "0" * 24, "format": {"type": "text", "field": "text"}}
    training = {"batch_size": batch, "max_seq_length": seq, "max_steps": 2, "checkpoint_every_steps": None}
    return JobSpec.model_validate({**base, **overrides, "training": {**training, **overrides.get("training", {})}})


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmHWM", "VmRSS")}


def _child(specs: list[dict[str, Any]], out: Path) -> None:
    """Train each spec in turn; print the growth each one's training added to the process's resident memory."""
    from worker.training import causal_lm, recipe
    from worker.training.progress import LogReport, ProgressCallback

    marks: dict[str, int] = {}

    class Measured(ProgressCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            super().on_train_begin(*args, **kwargs)
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            marks["base"] = _status()["VmRSS"]

    causal_lm.ProgressCallback = Measured  # only adds the measurement; the recipe runs as the worker runs it
    results = []
    for i, data in enumerate(specs):
        spec = JobSpec.model_validate(data)
        rows, rnd = out / f"rows-{i}.jsonl", random.Random(i)
        text = [" ".join(rnd.choice(WORDS) for _ in range(2 * spec.training.max_seq_length)) for _ in range(32)]
        rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in text))
        result = recipe.run(spec, rows, out / f"job-{i}", LogReport())
        tokens_per_second = (result.train_tokens or 0) / result.train_seconds if result.train_seconds else None
        results.append({"growth": _status()["VmHWM"] - marks["base"], "tokens_per_second": tokens_per_second})
    print("RESULTS " + json.dumps(results), flush=True)


def measure(specs: list[JobSpec]) -> list[dict[str, Any]]:
    """Train each spec in one fresh process (imports paid once) and return what each added at its peak."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(Path(__file__).parents[2])}
    with tempfile.TemporaryDirectory() as out:
        payload = json.dumps([s.model_dump(mode="json") for s in specs])
        argv = [sys.executable, "-m", "tests.training.test_memory_estimate", "--child", payload, out]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULTS ")), None)
    assert line is not None, done.stderr[-3000:]
    return json.loads(line.removeprefix("RESULTS "))


def estimate_growth(model_dir: Path, spec: JobSpec) -> int:
    shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    t = spec.training  # every row is longer than max_seq_length: each example is exactly that long
    return memory(shape, spec, peak_batch(spec, False, t.max_seq_length, t.max_seq_length), CPU).training_growth


def comparison(model_dir: Path, batch: int = 8, seq: int = 512) -> list[dict[str, Any]]:
    specs = [job_spec(model_dir.name, overrides, batch, seq) for _label, overrides in CASES]
    rows = []
    for (label, _), spec, measured in zip(CASES, specs, measure(specs), strict=True):
        predicted = estimate_growth(model_dir, spec)
        rows.append({"case": label, "predicted": predicted, "measured": measured["growth"], **measured})
    return rows


def test_training_memory_growth_matches_the_estimate(tiny_model: Path) -> None:
    for row in comparison(tiny_model):
        error = row["predicted"] / row["measured"] - 1
        assert abs(error) <= TOLERANCE, f"{row['case']}: predicted {row['predicted']:,} measured {row['measured']:,}"


def _tensor_bytes(model: Any) -> int:
    """The model's weights as stored: 4-bit payloads with their quantization constants, other tensors as they are."""
    total = 0
    for param in model.parameters():
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


@pytest.mark.parametrize("quantization", [{"bits": 4}, {"bits": 4, "double_quant": False}, None])
def test_weights_match_the_estimate(tiny_model: Path, quantization: dict | None) -> None:
    from app.fleet.estimate import _weight_bytes
    from worker.training.model import load_model

    spec = job_spec(tiny_model.name, {"quantization": quantization}, 1, 64)
    shape = ModelShape.from_config(json.loads((tiny_model / "config.json").read_text()))
    assert _tensor_bytes(load_model(spec)) == pytest.approx(_weight_bytes(shape, spec, CPU), rel=0.01)


def _table(models: list[str]) -> None:
    """Rows for docs/estimates.md; each argument is MODEL_DIR or MODEL_DIR@BATCHxSEQ (default 8x512)."""
    print("| model | batch x tokens | case | predicted MiB | measured MiB | error | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arg in models:
        path, _, size = arg.partition("@")
        batch, seq = map(int, (size or "8x512").split("x"))
        for row in comparison(Path(path), batch, seq):
            error = row["predicted"] / row["measured"] - 1
            tps = f"{row['tokens_per_second']:.0f}" if row["tokens_per_second"] else "-"
            print(
                f"| {Path(path).name} | {batch} x {seq} | {row['case']} | {row['predicted'] / 2**20:.1f} | "
                f"{row['measured'] / 2**20:.1f} | {error:+.1%} | {tps} |"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(json.loads(sys.argv[2]), Path(sys.argv[3]))
    else:
        _table(sys.argv[1:])
