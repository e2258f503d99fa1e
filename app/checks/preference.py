"""POST /jobs/validate for preference data: each example's prompt and answers as the trainer will tokenize them.

TRL's preference trainers render a conversational prompt with the generation prompt, and an answer as what the
whole conversation adds after it; a text prompt and answer are tokenized as they are, the answer ending in EOS.
`max_seq_length` bounds prompt + answer (the longer answer of a pair), cut from the end.
"""

import math
from typing import Any

from app.checks.report import AnswerPreview, PreferencePreview, Problem, TokenLengths, ValidationReport
from app.checks.template_sandbox import TemplateRenderError, render_conversations
from app.checks.tokenization import NO_TEMPLATE, ModelTokenizer, choose_chat_template

PREVIEW_EXAMPLES = 3
Rendered = dict[tuple[int, str], tuple[str, str]]  # (example index, side) -> (prompt alone, whole conversation)


def _render_all(
    tok: ModelTokenizer, template: str | None, examples: list[tuple[int, dict[str, Any]]], sides: tuple[str, ...]
) -> Rendered:
    """Each conversational example's prompt (with the generation prompt) and prompt + answer, per side, rendered in
    one sandbox run; TemplateRenderError naming the example's index."""
    conversations: list[dict[str, Any]] = []
    owners: list[int] = []  # the example index of each conversation
    places: dict[tuple[int, str], tuple[int, int]] = {}
    for i, (_, example) in enumerate(examples):
        prompt, tools = example["prompt"], example.get("tools")
        if isinstance(prompt, str):
            continue
        if template is None:
            raise TemplateRenderError(i, NO_TEMPLATE)
        head = len(conversations)
        conversations.append({"messages": prompt, "tools": tools, "add_generation_prompt": True})
        for side in sides:
            places[i, side] = (head, len(conversations))
            conversations.append({"messages": [*prompt, *example[side]], "tools": tools})
        owners += [i] * (1 + len(sides))
    try:
        texts = render_conversations(template or "", tok.special_tokens, conversations)
    except TemplateRenderError as exc:
        raise TemplateRenderError(owners[exc.index], exc.message) from None
    return {key: (texts[head][0], texts[whole][0]) for key, (head, whole) in places.items()}


def _texts(tok: ModelTokenizer, rendered: Rendered, i: int, example: dict[str, Any], side: str) -> tuple[str, str]:
    """(prompt text, answer text) as the trainer renders them."""
    prompt, answer = example["prompt"], example[side]
    if isinstance(prompt, str):
        return prompt, answer + tok.eos_token
    head, whole = rendered[i, side]
    if not whole.startswith(head):  # the template renders the prompt differently alone: TRL cuts where they part
        n = next((k for k, (a, b) in enumerate(zip(head, whole, strict=False)) if a != b), min(len(head), len(whole)))
        return whole[:n], whole[n:]
    return head, whole[len(head) :]


def _count(tok: ModelTokenizer, text: str, special: bool) -> int:
    return len(tok.tokenizer.encode(text, add_special_tokens=special).ids)


def check_preference(
    spec: Any, tok: ModelTokenizer, examples: list[tuple[int, dict[str, Any]]], report: ValidationReport
) -> None:
    """Token counts, truncation and previews of preference examples; problems and warnings go into `report`."""
    try:
        choice = choose_chat_template(spec.format, spec.base_model, tok.chat_template)
    except ValueError as exc:
        report.problems.append(Problem(field="format.chat_template", message=str(exc)))
        return
    if choice.warning and any(not isinstance(e["prompt"], str) for _, e in examples):
        report.warnings.append(choice.warning)
    sides = ("chosen", "rejected") if spec.format.type == "preference" else ("completion",)
    limit, truncated, lengths = spec.training.max_seq_length, 0, []
    try:
        rendered = _render_all(tok, choice.template, examples, sides)
    except TemplateRenderError as exc:  # the template failed on this row, or there is none for messages
        number = examples[exc.index][0]
        message = (
            f"{spec.base_model!r} has no chat template for conversational rows: give format.chat_template"
            if exc.message == NO_TEMPLATE
            else exc.message
        )
        report.problems.append(Problem(row=number, field="format", message=f"row {number}: {message}"))
        return
    for i, (number, example) in enumerate(examples):
        parts = {side: _texts(tok, rendered, i, example, side) for side in sides}
        prompt_text = parts[sides[0]][0]
        prompt_tokens = _count(tok, prompt_text, special=isinstance(example["prompt"], str))
        answers = {side: AnswerPreview(text=text, tokens=_count(tok, text, False)) for side, (_, text) in parts.items()}
        lengths.append(prompt_tokens + max(a.tokens for a in answers.values()))
        cut = lengths[-1] > limit
        truncated += cut
        if len(report.pairs) < PREVIEW_EXAMPLES:
            report.pairs.append(
                PreferencePreview(
                    row=number,
                    prompt=prompt_text,
                    prompt_tokens=prompt_tokens,
                    truncated=cut,
                    label=example.get("label"),
                    **answers,
                )
            )
    report.truncated = truncated
    if lengths:  # prompt + the longer answer: what the estimate sizes a sequence by
        ranked = sorted(lengths)
        rank = lambda q: ranked[max(1, math.ceil(q / 100 * len(ranked))) - 1]  # noqa: E731 - nearest rank
        report.token_lengths = TokenLengths(min=ranked[0], p50=rank(50), p95=rank(95), max=ranked[-1])
    if truncated:
        report.warnings.append(
            f"{truncated} of {len(examples)} training examples are longer than training.max_seq_length "
            f"({limit} tokens) and lose the end of their answers"
        )
    if spec.format.type == "unpaired_preference":
        labels = {example["label"] for _, example in examples}
        if len(labels) < 2:
            report.warnings.append(
                f"every answer is labelled {next(iter(labels), True)}: KTO learns most from both good and bad ones"
            )
