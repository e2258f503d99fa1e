"""What POST /jobs/validate answers: the problems that stop a job, warnings, and the examples as trained."""

from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer


class Problem(BaseModel):
    field: str | None = Field(None, description="The spec field at fault, e.g. `format.template`.")
    row: int | None = Field(None, description="The dataset row at fault, counting from 1.")
    message: str

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}  # `field` or `row`, as the contract shows


class ExamplePreview(BaseModel):
    row: int = Field(description="Which dataset row this is, counting from 1.")
    text: str = Field(description="What the model reads, after the template and truncation.")
    trained: str = Field(description="The part that carries loss (assistant turns, the completion, or all text).")
    tokens: int
    trained_tokens: int
    truncated: bool


class AnswerPreview(BaseModel):
    text: str
    tokens: int


class PreferencePreview(BaseModel):
    row: int = Field(description="Which dataset row this is, counting from 1.")
    prompt: str = Field(description="The prompt as the model reads it (through the chat template).")
    prompt_tokens: int
    chosen: AnswerPreview | None = Field(None, description="The preferred answer (pairs).")
    rejected: AnswerPreview | None = Field(None, description="The other answer (pairs).")
    completion: AnswerPreview | None = Field(None, description="The answer (labelled data).")
    label: bool | None = Field(None, description="Labelled data: true a good answer, false a bad one.")
    truncated: bool = Field(description="Prompt + answer is longer than training.max_seq_length and loses its end.")


class TokenLengths(BaseModel):
    min: int
    p50: int
    p95: int
    max: int


class ValidationReport(BaseModel):
    ok: bool = Field(description="True when nothing stops the job; `problems` says what does.")
    problems: list[Problem] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="Worth knowing, but the job can run.")
    examples: list[ExamplePreview] = Field(default_factory=list)
    pairs: list[PreferencePreview] = Field(
        default_factory=list,
        description="Preference data: the first examples' prompt and answers with their token counts.",
    )
    token_lengths: TokenLengths | None = None
    truncated: int | None = Field(None, description="Training examples longer than max_seq_length.")
    dropped: int | None = Field(None, description="Examples left with no trained token after truncation.")
    train_examples: int | None = None
    eval_examples: int | None = None
    total_steps: int | None = Field(None, description="Optimizer steps the job will run.")

    def summary(self) -> str:
        """The problems in one line, for a 422's `detail`."""
        parts = []
        for p in self.problems[:5]:
            where = p.field or (f"row {p.row}" if p.row else "")
            parts.append(f"{where}: {p.message}" if where and not p.message.startswith(f"row {p.row}") else p.message)
        more = len(self.problems) - 5
        return "; ".join(parts) + (f"; and {more} more (POST /jobs/validate lists them all)" if more > 0 else "")
