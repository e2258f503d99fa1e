"""The adapter's model card: README.md (spec, lineage, final metrics, base vs adapter) and a loss-curve PNG.

The PNG is drawn here with zlib alone (a polyline on axes), so workers need no plotting library.
"""

import json
import logging
import struct
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.core.db import session_scope
from app.core.egress import redact_url
from app.models import Job
from app.spec.job import JobSpec
from worker import record

log = logging.getLogger(__name__)
WIDTH, HEIGHT, MARGIN = 480, 240, 24
INK, AXIS, PAPER = (31, 119, 180), (90, 90, 90), (255, 255, 255)


def _png(pixels: list[bytearray]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in pixels)  # filter type 0 on every scanline
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _line(pixels: list[bytearray], a: tuple[int, int], b: tuple[int, int], color: tuple[int, int, int]) -> None:
    (x0, y0), (x1, y1) = a, b
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    for i in range(steps + 1):
        x, y = round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps)
        if 0 <= x < WIDTH and 0 <= y < HEIGHT:
            pixels[y][3 * x : 3 * x + 3] = bytes(color)


def loss_curve_png(points: list[tuple[int, float]]) -> bytes:
    """A PNG of loss against step (axes, no labels: the README states the range)."""
    pixels = [bytearray(PAPER * WIDTH) for _ in range(HEIGHT)]
    left, bottom, right, top = MARGIN, HEIGHT - MARGIN, WIDTH - MARGIN // 2, MARGIN // 2
    _line(pixels, (left, top), (left, bottom), AXIS)
    _line(pixels, (left, bottom), (right, bottom), AXIS)
    if len(points) >= 2:
        steps, losses = [p[0] for p in points], [p[1] for p in points]
        lo, hi = min(losses), max(losses)
        span_s, span_l = max(steps[-1] - steps[0], 1), max(hi - lo, 1e-9)

        def at(step: int, loss: float) -> tuple[int, int]:
            x = left + (step - steps[0]) / span_s * (right - left)
            return round(x), round(bottom - (loss - lo) / span_l * (bottom - top))

        for (s0, l0), (s1, l1) in zip(points, points[1:], strict=False):
            _line(pixels, at(s0, l0), at(s1, l1), INK)
    return _png(pixels)


def _table(rows: dict[str, Any]) -> str:
    return "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows.items() if v is not None)])


def _card_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec as the card shows it: a card may be published, and a webhook URL may carry a token."""
    shown = spec.model_dump(mode="json")
    if shown.get("webhook_url"):
        shown["webhook_url"] = redact_url(shown["webhook_url"])
    return shown


def _how_to_load(spec: JobSpec) -> str:
    """The loading line: a classification adapter goes on AutoModelForSequenceClassification, with its labels."""
    if spec.task == "classification":
        return (
            f"A text classifier: load it with `PeftModel.from_pretrained(AutoModelForSequenceClassification"
            f'.from_pretrained("{spec.base_model}", num_labels=len(labels), id2label=..., label2id=...), this_dir)`, '
            "the labels and their ids read from `labels.json` beside this card."
        )
    base = f'AutoModelForCausalLM.from_pretrained("{spec.base_model}")'
    return f"Load it with `PeftModel.from_pretrained({base}, this_dir)`."


def _comparison(evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return "Not run (set `training.evaluate_base: true` with eval data to compare base and adapter)."
    lines = ["| | base | adapter |", "| --- | --- | --- |"]
    for key in ("eval_loss", "perplexity", "accuracy"):
        base, adapter = (evaluation.get("base") or {}).get(key), (evaluation.get("adapter") or {}).get(key)
        if base is not None or adapter is not None:
            lines.append(f"| {key} | {_fmt(base)} | {_fmt(adapter)} |")
    return "\n".join([*lines, "", f"On {evaluation['examples']} held-out examples."])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def write_model_card(
    adapter_dir: Path,
    spec: JobSpec,
    lineage: dict[str, Any],
    result: dict[str, Any],
    losses: list[tuple[int, float]],
    job_id: str,
) -> None:
    """README.md and loss_curve.png into the adapter directory, before it is packed."""
    (adapter_dir / "loss_curve.png").write_bytes(loss_curve_png(losses))
    libraries = ", ".join(f"{k} {v}" for k, v in lineage.get("libraries", {}).items() if v)
    loss_range = f"{losses[0][1]:.4g} at step {losses[0][0]} → {losses[-1][1]:.4g} at step {losses[-1][0]}"
    card = f"""---
base_model: {spec.base_model}
library_name: peft
pipeline_tag: {"text-classification" if spec.task == "classification" else "text-generation"}
tags: [lora, finetune-service]
---
# {spec.name or job_id}

A {spec.adapter.method} adapter for `{spec.base_model}`, trained by finetune-service (job `{job_id}`).
{_how_to_load(spec)}

## Lineage
{
        _table(
            {
                "dataset sha256": lineage.get("dataset_sha256"),
                "validation dataset sha256": lineage.get("validation_dataset_sha256"),
                "format sha256": lineage.get("format_sha256"),
                "seed": lineage.get("seed"),
                "device": lineage.get("device"),
                "libraries": libraries,
            }
        )
    }

## Final metrics
{
        _table(
            {
                k: result.get(k)
                for k in (
                    "steps",
                    "train_loss",
                    "eval_loss",
                    "trainable_parameters",
                    "total_parameters",
                    "runtime_seconds",
                    "best_step",
                )
            }
        )
    }

## Base model vs adapter
{_comparison(result.get("evaluation"))}

## Loss curve
![loss curve](loss_curve.png)

Training loss {loss_range if losses else "(not logged)"}.

## Training spec
```json
{json.dumps(_card_spec(spec), indent=2)}
```
"""
    (adapter_dir / "README.md").write_text(card, encoding="utf-8")


def document_adapter(job_id: str, spec: JobSpec, result: Any) -> None:
    """Store the base-vs-adapter evaluation on the job and write the model card beside the adapter."""
    with session_scope() as session:
        if result.evaluation is not None:
            log.info("job %s: base vs adapter %s", job_id, json.dumps(result.evaluation))
            record.set_evaluation(session, job_id, result.evaluation)
        lineage = session.scalar(select(Job.lineage).where(Job.id == job_id)) or {}
        losses = record.train_losses(session, job_id)
    write_model_card(Path(result.adapter_dir), spec, lineage, asdict(result), losses, job_id)
