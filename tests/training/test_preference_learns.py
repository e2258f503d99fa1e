"""DPO learns a preference that depends on the prompt, on the tiny model, through the recipe the worker runs.

The task: "The <thing> was <word>." → "positive" or "negative", by the word. An SFT adapter is first trained on
answers whose sentiment is a coin flip (it learns the format, not the preference); DPO then continues from it
(`init_from`'s path: the SFT adapter trained on, TRL's frozen copy as the reference) on pairs of the right and the
wrong answer. On held-out sentences (word-thing combinations never trained on) the trainer's eval reward accuracy
rises from chance to 0.9 or more, and greedy generation says the preferred answer far more often than with the
SFT adapter alone.
"""

import json
import random
from pathlib import Path

from app.spec.job import JobSpec
from tests.conftest import TINY_MODEL
from worker.training import recipe
from worker.training.generation import Sampling, generate, load_for_inference
from worker.training.progress import LogReport

GOOD = ["wonderful", "great", "excellent", "amazing", "fantastic", "good", "happy", "love"]
BAD = ["terrible", "awful", "boring", "poor", "bad", "sad", "hate", "slow"]
THINGS = ["movie", "food", "book", "story", "service", "acting"]


class Points(LogReport):
    def __init__(self) -> None:
        super().__init__()
        self.evals: list[dict] = []

    def eval_point(self, point: dict) -> None:
        self.evals.append(point)


def sentences() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rng = random.Random(0)
    pairs = [
        (f"The {thing} was {word}.", "positive" if word in GOOD else "negative")
        for word in GOOD + BAD
        for thing in THINGS
    ]
    rng.shuffle(pairs)
    return pairs[:64], pairs[64:]


def prompt(sentence: str) -> list[dict]:
    return [{"role": "user", "content": f"{sentence} Sentiment?"}]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def spec(fmt: dict, method: dict, steps: int, lr: float) -> JobSpec:
    return JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": "ds_000000000000000000000000",
            "validation_dataset": "ds_000000000000000000000001",
            "format": fmt,
            "method": method,
            "quantization": {"bits": 4},
            "training": {
                "max_steps": steps,
                "batch_size": 8,
                "learning_rate": lr,
                "eval_every_steps": 10,
                "optimizer": "adamw_torch",
                "checkpoint_every_steps": None,
                "seed": 1,
            },
        }
    )


def accuracy(spec_: JobSpec, adapter: Path, held_out: list[tuple[str, str]]) -> float:
    model, tokenizer = load_for_inference(spec_, adapter)
    texts = [tokenizer.apply_chat_template(prompt(s), tokenize=False, add_generation_prompt=True) for s, _ in held_out]
    outputs = generate(model, tokenizer, texts, Sampling(max_new_tokens=3), chat=True)
    return sum(out.strip().startswith(label) for out, (_, label) in zip(outputs, held_out, strict=True)) / len(held_out)


def test_dpo_after_sft_learns_the_preferred_answer_on_held_out_prompts(tiny_model: Path, tmp_path: Path) -> None:
    train, held_out = sentences()
    coin = random.Random(1)
    sft_rows = [
        {"messages": [*prompt(s), {"role": "assistant", "content": coin.choice(["positive", "negative"])}]}
        for s, _ in train
    ]
    sft_eval = [{"messages": [*prompt(s), {"role": "assistant", "content": label}]} for s, label in held_out]
    sft = spec({"type": "chat"}, {"type": "sft"}, steps=30, lr=3e-3)
    sft_result = recipe.run(
        sft,
        write(tmp_path / "sft.jsonl", sft_rows),
        tmp_path / "sft",
        validation_path=write(tmp_path / "sft-eval.jsonl", sft_eval),
    )

    def pairs(rows: list[tuple[str, str]]) -> list[dict]:
        flip = {"positive": "negative", "negative": "positive"}
        return [
            {
                "prompt": prompt(s),
                "chosen": [{"role": "assistant", "content": label}],
                "rejected": [{"role": "assistant", "content": flip[label]}],
            }
            for s, label in rows
        ]

    dpo = spec({"type": "preference"}, {"type": "dpo", "beta": 0.3, "rpo_alpha": 1.0}, steps=90, lr=3e-3)
    points = Points()
    dpo_result = recipe.run(
        dpo,
        write(tmp_path / "pairs.jsonl", pairs(train)),
        tmp_path / "dpo",
        points,
        validation_path=write(tmp_path / "pairs-eval.jsonl", pairs(held_out)),
        init_adapter=Path(sft_result.adapter_dir),
    )
    held = [p["rewards/accuracies"] for p in points.evals]
    # At step 0 the policy is the reference: every reward is 0 and the accuracy is chance. On prompts never trained on:
    assert held[-1] >= 0.9 and held[-1] > held[0], held
    before = accuracy(sft, Path(sft_result.adapter_dir), held_out)
    after = accuracy(dpo, Path(dpo_result.adapter_dir), held_out)
    print(f"held-out reward accuracy {held}; greedy answers right: SFT {before:.2f}, SFT + DPO {after:.2f}")
    assert after >= 0.9 and after - before >= 0.3, (before, after)
