"""Preference data in the shapes people have, as the examples TRL's preference trainers take.

`preference` (DPO, ORPO, SimPO) reads, row by row, whichever of these a row is:
- TRL's `{"prompt", "chosen", "rejected"}`, each a string or a list of messages;
- OpenAI's DPO lines `{"input": {"messages", "tools"}, "preferred_output": [...], "non_preferred_output": [...]}`;
- ShareGPT pairs `{"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}}` (LLaMA-Factory).
`unpaired_preference` (KTO) reads `{"prompt", "completion", "label"}` or `{"messages": [...], "label"}`, the label
a boolean (good / bad answer). Messages are checked like chat rows (app.spec.conversations).
"""

from typing import Any, Literal

from pydantic import Field

from app.spec.conversations import _short, check_messages, sharegpt_example, tool_schemas
from app.spec.errors import RowError
from app.spec.formats import CHAT_TEMPLATE, ChatTemplate, ShareGPTFormat, StrictModel


class PreferenceFormat(StrictModel):
    """Pairs of a better and a worse answer to one prompt (DPO, ORPO, SimPO)."""

    type: Literal["preference"] = "preference"
    prompt: str = Field("prompt", description="Column of the prompt (text, or messages).")
    chosen: str = Field("chosen", description="Column of the preferred answer (text, a message, or messages).")
    rejected: str = Field("rejected", description="Column of the other answer.")
    chat_template: ChatTemplate = CHAT_TEMPLATE

    def columns(self) -> list[str]:
        return []  # each row may be any of the three shapes; the rows are checked one by one


class UnpairedPreferenceFormat(StrictModel):
    """Single answers labelled good (true) or bad (false) (KTO)."""

    type: Literal["unpaired_preference"] = "unpaired_preference"
    prompt: str = Field("prompt", description="Column of the prompt (text, or messages).")
    completion: str = Field("completion", description="Column of the answer (text, a message, or messages).")
    label: str = Field("label", description="Column of the boolean label: true a good answer, false a bad one.")
    chat_template: ChatTemplate = CHAT_TEMPLATE

    def columns(self) -> list[str]:
        return [self.label]


Example = dict[str, Any]


def _answer(value: Any, row: int, side: str) -> str | list[dict[str, Any]]:
    """One answer: text, an assistant message, or a list of them (conversational)."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(row, f"{side} is empty")
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RowError(row, f"{side} must be text or assistant messages, got {_short(value)}")
    messages = check_messages([{"role": "assistant", **m} if isinstance(m, dict) else m for m in value], row, side)
    if any(m["role"] != "assistant" for m in messages):
        raise RowError(row, f"{side} must hold assistant messages only")
    if not any((m["content"] or "").strip() or m.get("tool_calls") for m in messages):
        raise RowError(row, f"{side} is empty")
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _prompt(value: Any, row: int, field: str) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(row, f"{field} is empty")
        return value
    if not isinstance(value, list) or not value:
        raise RowError(row, f"{field} must be text or a list of messages, got {_short(value)}")
    messages = check_messages(value, row, field, need_answer=False)
    if messages[-1]["role"] == "assistant":
        raise RowError(row, f"{field} ends with an assistant message: the answers go in chosen / rejected")
    return messages


def _same_kind(prompt: Any, answers: list[Any], row: int) -> None:
    kinds = {isinstance(x, str) for x in (prompt, *answers)}
    if len(kinds) > 1:
        raise RowError(row, "prompt and answers must all be text or all be messages")


def _sharegpt_prompt(row: dict[str, Any], number: int) -> tuple[list[dict[str, Any]], list | None]:
    """A ShareGPT pair's conversation (ending on the user's turn) as prompt messages."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError(number, "conversations must be a non-empty list of {from, value} turns")
    stand_in = {"from": "gpt", "value": "-"}  # the conversation ends on the user's turn: close it to check it
    example = sharegpt_example(ShareGPTFormat(), {**row, "conversations": [*turns, stand_in]}, number)
    return example["messages"][:-1], example.get("tools")


def _sharegpt_answer(value: Any, row: int, side: str) -> list[dict[str, Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        raise RowError(row, f"{side} must be a {{from, value}} turn, got {_short(value)}")
    return _answer({"content": value["value"]}, row, side)  # type: ignore[return-value]


def preference_example(fmt: PreferenceFormat, row: dict[str, Any], number: int) -> Example:
    """One row as TRL's explicit-prompt preference example: {prompt, chosen, rejected} (+ tools)."""
    tools = None
    if "input" in row and "preferred_output" in row:  # OpenAI's DPO shape
        given = row["input"] if isinstance(row["input"], dict) else {}
        prompt = _prompt(given.get("messages"), number, "input.messages")
        tools = tool_schemas(given.get("tools"), number, "input.tools")
        chosen = _answer(row.get("preferred_output"), number, "preferred_output")
        rejected = _answer(row.get("non_preferred_output"), number, "non_preferred_output")
    elif "conversations" in row:  # ShareGPT pairs
        prompt, tools = _sharegpt_prompt(row, number)
        chosen = _sharegpt_answer(row.get("chosen"), number, "chosen")
        rejected = _sharegpt_answer(row.get("rejected"), number, "rejected")
    else:
        missing = [c for c in (fmt.prompt, fmt.chosen, fmt.rejected) if row.get(c) is None]
        if missing:
            raise RowError(
                number,
                f"missing {', '.join(map(repr, missing))}: a row is {{prompt, chosen, rejected}}, OpenAI's "
                "{input, preferred_output, non_preferred_output} or ShareGPT's {conversations, chosen, rejected}",
            )
        prompt = _prompt(row[fmt.prompt], number, fmt.prompt)
        chosen = _answer(row[fmt.chosen], number, fmt.chosen)
        rejected = _answer(row[fmt.rejected], number, fmt.rejected)
    _same_kind(prompt, [chosen, rejected], number)
    if chosen == rejected:
        raise RowError(number, "chosen and rejected are identical: there is no preference to learn")
    example: Example = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if tools is not None:
        example["tools"] = tools
    return example


def unpaired_example(fmt: UnpairedPreferenceFormat, row: dict[str, Any], number: int) -> Example:
    """One row as TRL's unpaired preference example: {prompt, completion, label}."""
    label = row.get(fmt.label)
    if not isinstance(label, bool):
        raise RowError(number, f"{fmt.label} must be true or false, got {_short(label)}")
    if "messages" in row and fmt.prompt not in row:
        messages = check_messages(row["messages"], number, "messages")
        if messages[-1]["role"] != "assistant":
            raise RowError(number, "messages must end with the assistant answer that is labelled")
        prompt: Any = messages[:-1]
        if not prompt:
            raise RowError(number, "messages have no prompt before the answer")
        completion: Any = [{k: v for k, v in messages[-1].items() if k != "weight"}]
    else:
        if row.get(fmt.prompt) is None or row.get(fmt.completion) is None:
            raise RowError(number, f"a row is {{{fmt.prompt}, {fmt.completion}, {fmt.label}}} or {{messages, label}}")
        prompt = _prompt(row[fmt.prompt], number, fmt.prompt)
        completion = _answer(row[fmt.completion], number, fmt.completion)
    _same_kind(prompt, [completion], number)
    return {"prompt": prompt, "completion": completion, "label": label}
