"""Where a job's examples come from and how a row becomes one: Hub datasets, the data formats, templates."""

import re
import string
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.core.config import settings
from app.spec.templates import is_template_name, named_template

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def template_fields(template: str) -> list[str]:
    """The column names a `{column}` template uses; refuses anything but plain names.

    A template is user input: `{x.__class__}` or `{x[0]}` would reach into Python objects, so only
    identifiers are allowed, with no conversion or format spec. `{{` and `}}` are literal braces.
    """
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is not valid: {exc} (write literal braces as {{{{ and }}}})") from exc
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() and not re.fullmatch(r"[\w -]+", name or ""):
            raise ValueError(f"template field {{{name}}} must be a plain column name")
        if spec or conversion:
            raise ValueError(f"template field {{{name}}} must not carry a conversion or format spec")
        fields.append(name)
    return fields


class HubDataset(StrictModel):
    hub: str = Field(description="A Hugging Face Hub dataset id, e.g. `Abirate/english_quotes`.")
    split: str = Field("train", description="Which split to train on.")

    @field_validator("hub")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        if not HUB_ID.fullmatch(value):
            raise ValueError("hub must be a dataset id like `owner/name` (no URLs or paths)")
        return value


class TextFormat(StrictModel):
    type: Literal["text"] = "text"
    field: str = Field("text", description="The column trained on as is.")

    def columns(self) -> list[str]:
        return [self.field]


class TemplateFormat(StrictModel):
    type: Literal["template"] = "template"
    template: str = Field(description="A `{column}` template rendered per row, e.g. `{quote} ->: {tags}`.")

    @field_validator("template")
    @classmethod
    def _fields(cls, value: str) -> str:
        if not template_fields(value):
            raise ValueError("template must name at least one {column}")
        return value

    def columns(self) -> list[str]:
        return template_fields(self.template)


TRAIN_ON_INPUTS = Field(
    False, description="Every token carries loss, the prompt (system, user and tool turns) too, not only the answers."
)


def _known_template(value: str | None) -> str | None:
    """A built-in name that exists, or Jinja no longer than FT_TEMPLATE_MAX_CHARS (compiling and rendering it
    costs the API time and memory in proportion)."""
    if value is not None and is_template_name(value):
        named_template(value)  # ValueError naming the built-in ones
    elif value is not None and len(value) > settings.template_max_chars:
        raise ValueError(
            f"the chat template is {len(value):,} characters, over the limit of {settings.template_max_chars:,} "
            "(FT_TEMPLATE_MAX_CHARS): shorten it, or give a built-in name"
        )
    return value


ChatTemplate = Annotated[str | None, AfterValidator(_known_template)]
CHAT_TEMPLATE = Field(
    None,
    description="A Jinja chat template, or the name of a built-in one (`chatml`, `llama3`, `qwen2.5`, `qwen3`, "
    "`gemma`, `phi3`, `alpaca`); instead of the model's, and needed when it has none (unless the deployment sets "
    "FT_DEFAULT_CHAT_TEMPLATE).",
)


class PromptCompletionFormat(StrictModel):
    type: Literal["prompt_completion"] = "prompt_completion"
    prompt: str = Field("{prompt}", description="Template of the prompt (no loss on it).")
    completion: str = Field("{completion}", description="Template of the completion (the loss is here).")
    train_on_inputs: bool = TRAIN_ON_INPUTS

    @field_validator("prompt", "completion")
    @classmethod
    def _fields(cls, value: str) -> str:
        template_fields(value)
        return value

    def columns(self) -> list[str]:
        return template_fields(self.prompt) + template_fields(self.completion)


class ChatFormat(StrictModel):
    """OpenAI's chat rows: `role`, `content`, `weight`, `tool_calls`, `tool_call_id`, `name`; a row-level `tools`."""

    type: Literal["chat"] = "chat"
    field: str = Field("messages", description="Column of OpenAI-style messages `[{role, content}]`.")
    tools: str = Field("tools", description="Column of the row's tool (function) schemas, when the data has it.")
    chat_template: ChatTemplate = CHAT_TEMPLATE
    train_on_inputs: bool = TRAIN_ON_INPUTS

    def columns(self) -> list[str]:
        return [self.field]


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "observation",
    "tool": "observation",
}
ShareGPTRole = Literal["system", "user", "assistant", "function_call", "observation"]


class ShareGPTFormat(StrictModel):
    """ShareGPT rows as LLaMA-Factory and Axolotl read them: `{"conversations": [{"from", "value"}], ...}`."""

    type: Literal["sharegpt"] = "sharegpt"
    field: str = Field("conversations", description="Column of the turns.")
    role_key: str = Field("from", description="Key of a turn's speaker.")
    content_key: str = Field("value", description="Key of a turn's text.")
    roles: dict[str, ShareGPTRole] = Field(
        default_factory=dict,
        description='Speaker names beyond the usual ones, e.g. `{"bot": "assistant"}`. The usual: human/user, '
        "gpt/assistant, system, function_call (an assistant tool call) and observation/tool (a tool result).",
    )
    system: str = Field("system", description="Column of the system prompt, when the data has it.")
    tools: str = Field("tools", description="Column of the tool schemas (a JSON string or a list), when present.")
    chat_template: ChatTemplate = CHAT_TEMPLATE
    train_on_inputs: bool = TRAIN_ON_INPUTS

    def speaker(self, name: Any) -> str | None:
        """What a speaker name means: user, assistant, system, function_call or observation; None if unknown."""
        return {**SHAREGPT_ROLES, **self.roles}.get(name) if isinstance(name, str) else None

    def columns(self) -> list[str]:
        return [self.field]


class AlpacaColumns(StrictModel):
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system: str = "system"
    history: str = "history"


class AlpacaFormat(StrictModel):
    """Alpaca rows (`instruction`, `input`, `output`, optional `system` and `history`), trained as a conversation."""

    type: Literal["alpaca"] = "alpaca"
    columns_: AlpacaColumns = Field(
        default_factory=AlpacaColumns,
        alias="columns",
        description='Column names, when the data names them otherwise: `{"output": "response"}`.',
    )
    chat_template: ChatTemplate = CHAT_TEMPLATE
    train_on_inputs: bool = TRAIN_ON_INPUTS

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    def columns(self) -> list[str]:
        return [self.columns_.instruction, self.columns_.output]


CONVERSATIONAL = (ChatFormat, ShareGPTFormat, AlpacaFormat)  # formats rendered through a chat template


class ClassificationFormat(StrictModel):
    """Text in, one label out (`task: classification`): see docs/classification.md."""

    type: Literal["classification"] = "classification"
    text: str = Field("text", description="The text to classify: a column name, or a `{column}` template.")
    label: str = Field("label", description="The column holding each row's label.")
    labels: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        None,
        min_length=2,
        max_length=1000,
        description="The label names, in the order of the head's outputs; integer labels in the data index this "
        "list. Default: the distinct labels of the training data, sorted.",
    )

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must be a column name or a `{column}` template")
        template_fields(value)
        return value

    @field_validator("labels")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("labels must be distinct")
        return value

    def text_template(self) -> str:
        """`text` as a template: a bare column name `review` is `{review}`."""
        return self.text if template_fields(self.text) else "{" + self.text + "}"

    def columns(self) -> list[str]:
        return [*template_fields(self.text_template()), self.label]
