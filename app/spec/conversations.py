"""Conversations as the chat template reads them: OpenAI chat, ShareGPT and Alpaca rows, checked and normalised alike.

Every conversational row becomes `{"messages": [...], "tools": [...]}` in OpenAI's shape, the one transformers'
chat templates render: `role`, `content` (null on an assistant message that only calls tools), `tool_calls` with
`arguments` as a JSON object, `tool_call_id` and `name` on tool results, and `weight` (0 or 1) on assistant turns.
A row that cannot become one raises RowError naming the row, the message and the value.
"""

import json
from typing import Any

from app.spec.errors import RowError
from app.spec.formats import AlpacaFormat, ChatFormat, ShareGPTFormat

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
Example = dict[str, Any]


def _text(value: Any) -> str | None:
    """A message's content as text: a string, or OpenAI's list of text parts joined; None if neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        texts = [p.get("text") for p in value]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def tool_schemas(value: Any, row: int, column: str) -> list[dict[str, Any]] | None:
    """A row's tools: a list (or a JSON string of one) of function schemas, in OpenAI's `{type, function}` shape."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise RowError(row, f"column {column!r} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, list):
        raise RowError(row, f"column {column!r} must be a list of function schemas, not {type(value).__name__}")
    tools = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(
                row,
                f'{column}[{i}] is not a function schema: give {{"name": ..., "description": ..., '
                f'"parameters": {{...}}}} or {{"type": "function", "function": {{...}}}}; got {_short(tool)}',
            )
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise RowError(row, f"{column}[{i}] ({function['name']}): parameters must be a JSON schema object")
        tools.append({"type": "function", "function": function})
    return tools


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _arguments(value: Any, row: int, where: str) -> dict[str, Any]:
    """A tool call's arguments as an object; OpenAI sends them as a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise RowError(row, f"{where}: arguments are not valid JSON: {_short(value)}") from None
    if not isinstance(value, dict):
        raise RowError(row, f"{where}: arguments must be a JSON object, got {_short(value)}")
    return value


def _tool_calls(value: Any, row: int, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise RowError(row, f"{where}: tool_calls must be a non-empty list")
    calls = []
    for k, call in enumerate(value):
        at = f"{where} tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(row, f'{at} must be {{"type": "function", "function": {{"name", "arguments"}}}}')
        normalised: dict[str, Any] = {
            "type": "function",
            "function": {"name": function["name"], "arguments": _arguments(function.get("arguments"), row, at)},
        }
        if call.get("id") is not None:
            normalised["id"] = str(call["id"])
        calls.append(normalised)
    return calls


def check_messages(
    messages: Any, row: int, field: str, train_on_inputs: bool = False, need_answer: bool = True
) -> list[dict[str, Any]]:
    """OpenAI-style messages, checked and normalised; at least one assistant turn left to train on (`need_answer`)."""
    if not isinstance(messages, list) or not messages:
        raise RowError(row, f"column {field!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(row, f"message {i} must be an object with role and content")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise RowError(row, f"message {i} has role {role!r}; use one of {', '.join(CHAT_ROLES)}")
        where = f"message {i} ({role})"
        normalised: dict[str, Any] = {"role": role, "content": _text(message.get("content"))}
        if role == "assistant" and message.get("tool_calls") is not None:
            normalised["tool_calls"] = _tool_calls(message["tool_calls"], row, where)
        elif message.get("tool_calls") is not None:
            raise RowError(row, f"{where}: only assistant messages carry tool_calls")
        calls_only = normalised.get("tool_calls") and message.get("content") in (None, "")
        if normalised["content"] is None and not calls_only:
            raise RowError(row, f"{where}: content must be a string (null only beside tool_calls)")
        for key in ("tool_call_id", "name"):
            if message.get(key) is not None:
                if not isinstance(message[key], str):
                    raise RowError(row, f"{where}: {key} must be a string")
                normalised[key] = message[key]
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                raise RowError(row, f"{where}: weight applies to assistant messages only")
            if isinstance(weight, bool) or weight not in (0, 1):
                raise RowError(row, f"{where}: weight must be 0 or 1, got {_short(weight)}")
            normalised["weight"] = int(weight)
        out.append(normalised)
    assistant = [m for m in out if m["role"] == "assistant"]
    if not need_answer:
        return out
    if not assistant:
        raise RowError(row, "no assistant message to train on")
    if not train_on_inputs and all(m.get("weight", 1) == 0 for m in assistant):
        raise RowError(row, "every assistant message has weight 0: there is nothing left to train on")
    return out


def chat_example(fmt: ChatFormat, row: dict[str, Any], number: int) -> Example:
    example: Example = {"messages": check_messages(row.get(fmt.field), number, fmt.field, fmt.train_on_inputs)}
    if (tools := tool_schemas(row.get(fmt.tools), number, fmt.tools)) is not None:
        example["tools"] = tools
    return example


USER_SIDE, MODEL_SIDE = ("user", "observation"), ("assistant", "function_call")


def _function_calls(value: str, row: int, where: str) -> list[dict[str, Any]]:
    """A ShareGPT function_call turn's value: `{"name", "arguments"}` as JSON, or a list of them (parallel calls)."""
    try:
        parsed = json.loads(value)
    except ValueError:
        raise RowError(row, f'{where}: a function_call turn must be JSON {{"name", "arguments"}}') from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    return _tool_calls([{"function": c} if isinstance(c, dict) else c for c in calls], row, where)


def sharegpt_example(fmt: ShareGPTFormat, row: dict[str, Any], number: int) -> Example:
    """ShareGPT turns as OpenAI messages: function_call turns become assistant tool calls, observations tool results."""
    turns = row.get(fmt.field)
    if not isinstance(turns, list) or not turns:
        keys = f"{{{fmt.role_key}, {fmt.content_key}}}"
        raise RowError(number, f"column {fmt.field!r} must be a non-empty list of {keys} turns")
    messages: list[dict[str, Any]] = []
    system = row.get(fmt.system)
    if system is not None and system != "":
        if not isinstance(system, str):
            raise RowError(number, f"column {fmt.system!r} must be text")
        messages.append({"role": "system", "content": system})
    expected, calls = USER_SIDE, []
    for i, turn in enumerate(turns):
        name = turn.get(fmt.role_key) if isinstance(turn, dict) else None
        speaker = fmt.speaker(name)
        value = turn.get(fmt.content_key) if isinstance(turn, dict) else None
        if speaker is None:
            known = ", ".join(sorted({*fmt.roles, "human", "gpt", "system", "function_call", "observation"}))
            raise RowError(
                number, f"turn {i} has speaker {_short(name)}; use one of {known} (or map it in format.roles)"
            )
        if not isinstance(value, str):
            raise RowError(number, f"turn {i} ({name}): {fmt.content_key!r} must be text")
        if speaker == "system":
            if i != 0 or messages:
                raise RowError(number, f"turn {i} ({name}): a system turn must come first")
            messages.append({"role": "system", "content": value})
            continue
        if speaker not in expected:
            side = "the user (human, observation)" if expected == USER_SIDE else "the model (gpt, function_call)"
            raise RowError(number, f"turn {i} ({name}): turns must alternate, and this one should be {side}")
        expected = MODEL_SIDE if expected == USER_SIDE else USER_SIDE
        if speaker == "function_call":
            calls = _function_calls(value, number, f"turn {i} ({name})")
            for k, call in enumerate(calls):
                call.setdefault("id", f"call_{i}_{k}")
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif speaker == "observation":
            result: dict[str, Any] = {"role": "tool", "content": value}
            if calls:
                result.update(tool_call_id=calls[0]["id"], name=calls[0]["function"]["name"])
            messages.append(result)
        else:
            messages.append({"role": speaker, "content": value})
    if expected == MODEL_SIDE:
        raise RowError(number, f"turn {len(turns) - 1} is the user's: a conversation ends on the model's turn")
    example: Example = {"messages": check_messages(messages, number, fmt.field, fmt.train_on_inputs)}
    if (tools := tool_schemas(row.get(fmt.tools), number, fmt.tools)) is not None:
        example["tools"] = tools
    return example


def _cell(row: dict[str, Any], column: str, number: int, required: bool = False) -> str:
    value = row.get(column)
    if value is None or value == "":
        if required:
            raise RowError(number, f"column {column!r} is missing or empty")
        return ""
    if not isinstance(value, str):
        raise RowError(number, f"column {column!r} must be text, got {_short(value)}")
    return value


def alpaca_example(fmt: AlpacaFormat, row: dict[str, Any], number: int) -> Example:
    """instruction (+ a blank line + input) as the user's turn, output as the answer, history as earlier turns."""
    cols = fmt.columns_
    instruction = _cell(row, cols.instruction, number, required=True)
    given_input = _cell(row, cols.input, number)
    output = _cell(row, cols.output, number, required=True)
    messages: list[dict[str, Any]] = []
    if system := _cell(row, cols.system, number):
        messages.append({"role": "system", "content": system})
    history = row.get(cols.history)
    if history not in (None, []):
        pairs_ok = isinstance(history, list) and all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in history
        )
        if not pairs_ok:
            raise RowError(number, f"column {cols.history!r} must be a list of [query, response] pairs of text")
        for query, response in history:
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    user = f"{instruction}\n\n{given_input}" if given_input else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}
