"""OpenAI's shapes for /v1/models, /v1/chat/completions and /v1/completions, as the `openai` SDK sends and parses them.

Unknown request fields are ignored, as OpenAI's own server ignores the ones a model does not use; the ones this
service cannot honour (log probabilities, JSON mode, forced tool calls, penalties, audio, echo) are refused with a
400 naming the field, rather than silently giving an answer the caller did not ask for.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

StopText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _refuse_if(value: Any, unsupported: bool, message: str) -> Any:
    if unsupported:
        raise ValueError(message)
    return value


# --- models ---


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# --- requests ---


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Only `text` parts are read: these models take no images or audio.")
    text: str | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        return _refuse_if(value, value != "text", f"content parts of type {value!r} are not supported: send text")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=200)
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=200)

    def for_template(self) -> dict[str, Any]:
        """The message as a chat template reads it: text content, `developer` as `system`, tool fields kept."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content)
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="A last chunk with `usage` (and no choices) before [DONE].")


class SamplingRequest(BaseModel):
    """What chat and text completions share: the model, how much to generate and how, and whether to stream."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        min_length=1,
        max_length=500,
        description="A base model your jobs used, or a job's `fine_tuned_model` (a checkpoint's name too): "
        "GET /v1/models lists them.",
    )
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy (deterministic); higher: more random.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the smallest token set with this much mass.")
    stop: StopText | list[StopText] | None = Field(None, description="Up to 4 strings that end a choice.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Sampling seed: the same seed, the same answer.")
    n: int = Field(1, ge=1, le=8, description="Choices to generate for the prompt.")
    stream: bool = Field(False, description="Answer as server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: Any) -> Any:
        return _refuse_if(value, isinstance(value, list) and len(value) > 4, "at most 4 stop sequences")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float | None) -> float | None:
        return _refuse_if(value, bool(value), "penalties are not supported here: leave it unset or 0")

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict | None) -> dict | None:
        return _refuse_if(value, bool(value), "logit_bias is not supported here: leave it unset")

    def token_limit(self) -> int | None:
        """max_tokens as the request names it (None: as many as fit)."""
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


FINE_TUNED = "ft:TinyLlama-TinyLlama-1.1B-Chat-v1.0:research:support-bot:job_0123456789abcdef01234567"


class ChatCompletionCreate(SamplingRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": FINE_TUNED,
                    "messages": [{"role": "user", "content": "How do I reset my password?"}],
                    "max_completion_tokens": 128,
                }
            ]
        }
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024, description="The conversation so far.")
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=128, description="Tool definitions, passed to the model's chat template as it trained."
    )
    tool_choice: Any = Field(None, description="`auto` or `none`; a model here cannot be forced to call a tool.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Tokens generated per choice at most.")
    max_tokens: int | None = Field(None, ge=1, description="The older name of max_completion_tokens.")
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    @field_validator("tool_choice")
    @classmethod
    def _free_choice(cls, value: Any) -> Any:
        forced = value not in (None, "auto", "none")
        return _refuse_if(value, forced, "a tool call cannot be forced here: use `auto` or `none`, or leave it unset")

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        return _refuse_if(value, bool(value), "log probabilities are not returned here: leave it unset")

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: dict | None) -> dict | None:
        json_mode = value is not None and value.get("type", "text") != "text"
        return _refuse_if(value, json_mode, "only text responses: constrained JSON output is not supported here")

    @field_validator("modalities")
    @classmethod
    def _text_modality(cls, value: list | None) -> list | None:
        return _refuse_if(value, any(m != "text" for m in value or []), "these models answer in text only")

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, value: dict | None) -> dict | None:
        return _refuse_if(value, value is not None, "these models answer in text only")

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionCreate(SamplingRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": FINE_TUNED, "prompt": "Once upon a time", "max_tokens": 32}]}
    )

    prompt: str | list[str] = Field(description="The text to continue, as given (no chat template).")
    max_tokens: int | None = Field(16, ge=1, description="Tokens generated per choice at most (OpenAI's default 16).")
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        many = isinstance(value, list) and len(value) != 1
        return _refuse_if(value, many, "send one prompt per request (a string, or a list of one string)")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        return _refuse_if(value, value, "echo is not supported here: leave it false")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        return _refuse_if(value, value is not None, "log probabilities are not returned here: leave it unset")

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        return _refuse_if(value, value not in (None, 1), "best_of is not supported here: use n")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return _refuse_if(value, bool(value), "suffix (insertion) is not supported here: leave it unset")

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens


# --- responses ---


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class TextCompletion(BaseModel):
    """`text_completion`: the answer of /v1/completions, and (with `usage` null until the end) each streamed chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
