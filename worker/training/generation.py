"""Generation with a job's adapter: its prompt format applied to raw inputs, base and adapter side by side.

One model is loaded (the base as the job trained it, quantized or not) with the adapter on top; the base's
outputs come from the same model with the adapter disabled. Runs on a worker, never in the API process; the
worker side of POST /jobs/{id}/generate (the call's record) is worker/inference.py.
"""

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from app.spec import examples as shared
from app.spec.formats import CONVERSATIONAL, PromptCompletionFormat, TemplateFormat
from app.spec.job import JobSpec
from worker.training import data
from worker.training import model as modelling
from worker.training.errors import TrainingError

BATCH = 16  # prompts per generate() call: enough to use the CPU's cores, small enough for a 7B on one GPU
Prompt = str | dict[str, Any]


@dataclass
class Sampling:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy, deterministic
    top_p: float = 1.0
    seed: int = 0


def load_for_inference(spec: JobSpec, adapter_dir: Path) -> tuple[PeftModel, Any]:
    """The job's base model (loaded as in training: the 4-bit CPU guard included) with its adapter, in eval mode."""
    tokenizer = modelling.load_tokenizer(spec.base_model)
    data.use_chat_template(spec, tokenizer)
    base = modelling.load_model(spec, spec.training.attn_implementation)
    base.config.use_cache = True  # training turns the KV cache off; generation wants it
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    return model, tokenizer


def _fill(template: str, value: Prompt, what: str) -> str:
    fields = shared_fields(template)
    if isinstance(value, dict):
        return shared.render_template(template, value, 1)
    if len(fields) > 1:
        raise TrainingError("invalid_request", f"{what} has fields {fields}: send each prompt as an object of them")
    return shared.render_template(template, {fields[0]: value}, 1) if fields else template + value


def shared_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def template_prompt_part(template: str) -> tuple[str, str]:
    """A template cut before its last field, both halves still templates: ("{review} -> sentiment:", " {label}").

    Whitespace before the cut goes with the second half, because a BPE tokenizer joins it to the next word:
    a prompt ending in a space asks the model for a token it never saw in training.
    """
    parts = list(string.Formatter().parse(template))
    named = [i for i, p in enumerate(parts) if p[1] is not None]
    if len(named) < 2:
        return template, ""

    def rebuild(chunk: list[tuple[str, str | None, str | None, str | None]]) -> str:
        return "".join(_escape(lit) + (f"{{{name}}}" if name is not None else "") for lit, name, _, _ in chunk)

    last = named[-1]
    head = rebuild(parts[:last]) + _escape(parts[last][0])
    tail = rebuild([("", parts[last][1], None, None), *parts[last + 1 :]])
    stripped = head.rstrip()
    return stripped, head[len(stripped) :] + tail


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def format_prompt(spec: JobSpec, tokenizer: Any, prompt: Prompt) -> str:
    """A raw input as the job's training text would present it, up to where the model should continue."""
    fmt = spec.format
    if isinstance(fmt, TemplateFormat):
        return _fill(template_prompt_part(fmt.template)[0], prompt, "format.template")
    if isinstance(fmt, PromptCompletionFormat):
        return _fill(fmt.prompt, prompt, "format.prompt")
    if isinstance(fmt, CONVERSATIONAL):
        messages = prompt.get("messages") if isinstance(prompt, dict) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, dict):
        raise TrainingError("invalid_request", "a text-format job takes prompts as plain strings")
    return prompt


def prompt_and_target(spec: JobSpec, tokenizer: Any, row: dict[str, Any]) -> tuple[str, str] | None:
    """A dataset row as (prompt, expected continuation), or None when the format has no such split."""
    fmt = spec.format
    if isinstance(fmt, TemplateFormat):
        head, tail = template_prompt_part(fmt.template)
        if not tail:
            return None
        return shared.render_template(head, row, 1), shared.render_template(tail, row, 1)
    if isinstance(fmt, PromptCompletionFormat):
        prompt = shared.render_template(fmt.prompt, row, 1)
        completion = shared.render_template(fmt.completion, row, 1)
        stripped = prompt.rstrip()
        return stripped, prompt[len(stripped) :] + completion
    if isinstance(fmt, CONVERSATIONAL):
        example = shared.to_example(fmt, row, 1)
        messages = example["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if not messages[last]["content"]:  # a tool call: not a label to match
            return None
        prompt = tokenizer.apply_chat_template(
            messages[:last], tools=example.get("tools"), tokenize=False, add_generation_prompt=True
        )
        return prompt, messages[last]["content"]
    return None


def generate(model: Any, tokenizer: Any, texts: list[str], sampling: Sampling, chat: bool = False) -> list[str]:
    """Continuations of already formatted prompts (left-padded batches; only the new tokens are decoded)."""
    outputs: list[str] = []
    model.eval()  # no LoRA dropout while generating
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    for start in range(0, len(texts), BATCH):
        batch = tokenizer(
            texts[start : start + BATCH], return_tensors="pt", padding=True, add_special_tokens=not chat
        ).to(device)
        torch.manual_seed(sampling.seed)  # base and adapter draw the same random numbers
        sample = sampling.temperature > 0
        with torch.no_grad():
            tokens = model.generate(
                **batch,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = tokens[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    tokenizer.padding_side = "right"
    return outputs


def side_by_side(
    spec: JobSpec, model: PeftModel, tokenizer: Any, prompts: list[Prompt], sampling: Sampling
) -> list[dict[str, Any]]:
    """[{prompt, base, adapter}] for raw prompts, formatted as the job's training data."""
    texts = [format_prompt(spec, tokenizer, p) for p in prompts]
    chat = isinstance(spec.format, CONVERSATIONAL)
    adapter = generate(model, tokenizer, texts, sampling, chat)
    with model.disable_adapter():
        base = generate(model, tokenizer, texts, sampling, chat)
    return [
        {"prompt": p, "formatted_prompt": t, "base": b, "adapter": a}
        for p, t, b, a in zip(prompts, texts, base, adapter, strict=True)
    ]
