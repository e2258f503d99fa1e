"""One batch of completions on the served model: rows left-padded together, each row streamed as it grows.

A batch holds the rows (one per choice: a request with `n` 2 is two rows) of requests that share sampling
settings; each row may have its own adapter (PEFT's mixed adapter batches, `adapter_names=`). Generation runs to
the batch's largest max_tokens; a `StoppingCriteria` sees every step, so it ends each row on its own (EOS, a
stop string, its max_tokens, its request's deadline), streams the row's new text as a `delta` entry, and answers
a request (`done` per choice, then `usage`) as soon as all its rows have ended, without waiting for the batch.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

Publish = Callable[..., None]  # publish(call_id, **entry): ServingQueue.publish
Finish = Callable[[str], None]  # finish(call_id): ServingQueue.finish


@dataclass
class Completion:
    """One request as the worker runs it (checked: worker/serving.py)."""

    id: str
    prompt: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    deadline: float = float("inf")  # Unix time; the API sets FT_SERVING_TIMEOUT_S from now
    adapter: str | None = None  # the loaded PEFT adapter's name; None: the base model
    mixable: bool = True  # False (DoRA): PEFT cannot mix it with other adapters, its batch is its own
    prompt_tokens: int = 0  # counted here, with the served tokenizer


@dataclass
class Row:
    """One choice being generated, and what of it has been streamed."""

    completion: Completion
    index: int
    ids: list[int] = field(default_factory=list)
    text: str = ""  # the decoded text so far (cut at a stop string once one appears)
    sent: int = 0  # characters of `text` already published
    prefix_at: int = 0  # incremental decoding offsets (as TGI and vLLM decode): see `_new_text`
    read_at: int = 0
    finish_reason: str | None = None


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids; special tokens (BOS) are added unless the rendered prompt already starts with one
    (a chat template that writes its own BOS), so the model sees what it trained on."""
    bos = tokenizer.bos_token
    return tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]


def generate(model: Any, tokenizer: Any, batch: list[Completion], publish: Publish, finish: Finish) -> None:
    """Generate every row of the batch's requests and publish the answers (the requests share sampling settings)."""
    rows = [Row(c, i) for c in batch for i in range(c.n)]
    prompts = [prompt_ids(tokenizer, c.prompt) for c in batch for _ in range(c.n)]
    inputs = tokenizer.pad({"input_ids": prompts}, padding=True, padding_side="left", return_tensors="pt")
    device = next(model.parameters()).device
    tracker = RowTracker(rows, inputs["input_ids"].shape[1], tokenizer, _eos_ids(model, tokenizer), publish, finish)
    first = batch[0]
    sample = first.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": max(c.max_tokens for c in batch),
        "do_sample": sample,
        "temperature": first.temperature if sample else None,
        "top_p": first.top_p if sample else None,
        "top_k": None,
        "pad_token_id": tokenizer.pad_token_id,
        "stopping_criteria": StoppingCriteriaList([tracker]),
    }
    if not first.mixable:
        model.set_adapter(first.adapter)  # the batch is all this adapter's (see `batches`)
    elif hasattr(model, "peft_config"):  # a PeftModel: each row its own adapter, "__base__" for none
        kwargs["adapter_names"] = [c.adapter or "__base__" for c in batch for _ in range(c.n)]
    if first.seed is not None:
        torch.manual_seed(first.seed)  # a seeded request runs alone in its batch: the same seed, the same text
    with torch.no_grad():
        model.generate(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device), **kwargs
        )
    tracker.end_all()


def batches(completions: list[Completion], max_rows: int, max_adapters: int) -> list[list[Completion]]:
    """The completions in batches that can run together, in order of their first request: the same sampling
    settings (greedy ones together; sampled ones with the same temperature and top_p), at most `max_rows` rows
    (a request's `n` rows stay in one batch) and `max_adapters` adapters; a seeded request alone, so its seed
    alone decides its text; a DoRA adapter's requests only with each other (PEFT cannot mix them)."""
    closed: list[list[Completion]] = []
    open_batches: dict[tuple[Any, ...], list[Completion]] = {}
    for c in completions:
        if c.seed is not None:
            closed.append([c])
            continue
        key = (c.temperature == 0, *((c.temperature, c.top_p) if c.temperature > 0 else ()))
        key += () if c.mixable else (c.adapter,)
        batch = open_batches.get(key, [])
        adapters = {b.adapter for b in batch if b.adapter} | ({c.adapter} if c.adapter else set())
        if batch and (sum(b.n for b in batch) + c.n > max_rows or len(adapters) > max_adapters):
            closed.append(batch)
            batch = []
        batch.append(c)
        open_batches[key] = batch
    order = {id(c): i for i, c in enumerate(completions)}
    return sorted([*closed, *open_batches.values()], key=lambda b: order[id(b[0])])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


class RowTracker(StoppingCriteria):
    """Called by `generate` after every step with all ids so far: streams, stops and answers each row."""

    def __init__(
        self, rows: list[Row], prompt_length: int, tokenizer: Any, eos: set[int], publish: Publish, finish: Finish
    ):
        self.rows, self.prompt_length, self.tokenizer, self.eos = rows, prompt_length, tokenizer, eos
        self.publish, self.finish = publish, finish
        self.answered: set[str] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :].tolist()
        now = time.time()
        for row, ids in zip(self.rows, new, strict=True):
            if row.finish_reason is None:
                self._step(row, ids[len(row.ids) :], now)
        return torch.tensor([row.finish_reason is not None for row in self.rows], device=input_ids.device)

    def _step(self, row: Row, tokens: list[int], now: float) -> None:
        completion = row.completion
        if now > completion.deadline:
            self._time_out(completion)
            return
        row.ids.extend(tokens)
        ended = any(token in self.eos for token in tokens)
        row.text += _new_text(self.tokenizer, row, final=ended)
        cut = _first_stop(row.text, completion.stop, row.sent)
        if cut is not None:
            row.text = row.text[:cut]
            self._end(row, "stop")
        elif ended:
            self._end(row, "stop")
        elif len(row.ids) >= completion.max_tokens:
            row.text += _new_text(self.tokenizer, row, final=True)
            self._end(row, "length")
        else:
            self._send(row, _held_back(row.text, completion.stop))

    def _send(self, row: Row, upto: int) -> None:
        if upto > row.sent:
            self.publish(row.completion.id, type="delta", index=row.index, text=row.text[row.sent : upto])
            row.sent = upto

    def _end(self, row: Row, reason: str) -> None:
        self._send(row, len(row.text))
        row.finish_reason = reason
        self.publish(row.completion.id, type="done", index=row.index, finish_reason=reason)
        mine = [r for r in self.rows if r.completion is row.completion]
        if all(r.finish_reason is not None for r in mine):
            completion_tokens = sum(len(r.ids) for r in mine)
            usage = {"prompt_tokens": row.completion.prompt_tokens, "completion_tokens": completion_tokens}
            self._answered(row.completion, type="usage", **usage)

    def _time_out(self, completion: Completion) -> None:
        for row in self.rows:
            if row.completion is completion:
                row.finish_reason = "timeout"
        message = "the completion did not finish before its deadline (FT_SERVING_TIMEOUT_S); ask for fewer max_tokens"
        self._answered(completion, type="error", kind="timeout", message=message)

    def _answered(self, completion: Completion, **entry: Any) -> None:
        if completion.id not in self.answered:
            self.answered.add(completion.id)
            self.publish(completion.id, **entry)
            self.finish(completion.id)

    def end_all(self) -> None:
        """After generate returns: rows it stopped itself (its own max_new_tokens) end by length."""
        for row in self.rows:
            if row.finish_reason is None:
                row.text += _new_text(self.tokenizer, row, final=True)
                self._end(row, "length")


def _new_text(tokenizer: Any, row: Row, final: bool = False) -> str:
    """The text the row's new tokens add, decoded over a short window of earlier ids (so a word's leading space
    and merges come out right) and held back while it ends in an incomplete UTF-8 character (U+FFFD)."""
    ids = row.ids
    before = tokenizer.decode(ids[row.prefix_at : row.read_at], skip_special_tokens=True)
    after = tokenizer.decode(ids[row.prefix_at :], skip_special_tokens=True)
    if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
        return ""
    row.prefix_at, row.read_at = row.read_at, len(ids)
    return after[len(before) :]


def _first_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the earliest stop string starts in text (only where it could not have been found before), or None."""
    longest = max((len(s) for s in stops), default=0)
    start = max(0, sent - longest)
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """How much of text may be sent: all but a tail that could still grow into a stop string."""
    longest = max((len(s) for s in stops), default=0)
    for keep in range(min(longest - 1, len(text)), 0, -1):
        if any(s.startswith(text[-keep:]) for s in stops):
            return len(text) - keep
    return len(text)
