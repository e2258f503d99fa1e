"""Chat templates as transformers renders them (sandboxed jinja2), with the character spans of assistant turns.

`{% generation %}...{% endgeneration %}` marks what carries loss; the spans are found the way transformers'
`apply_chat_template(..., return_assistant_tokens_mask=True)` finds them. jinja2 is imported on first use.
Templates a user can choose run in app.checks.template_sandbox's child process in the API; the worker renders in
process (the job passed validation; a template there can at worst fail its own job), both under the output cap.
"""

import importlib.util
import json
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class _Rendering:
    """A chat being rendered: its blocks so far, their total length, and the generation spans found."""

    blocks: list[str] = field(default_factory=list)
    length: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)


_tracking: ContextVar[_Rendering | None] = ContextVar("_tracking", default=None)


class TemplateOutputTooLong(ValueError):
    """One conversation rendered to more than FT_TEMPLATE_MAX_OUTPUT_CHARS characters."""


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTracker(Extension):
        """Records the character span each `{% generation %}` block renders to."""

        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_track"), [], [], body).set_lineno(lineno)

        def _track(self, caller: Any) -> str:
            text = caller()
            state = _tracking.get()
            if state is not None:
                state.spans.append((state.length, state.length + len(text)))
            return text

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTracker, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    return _environment().from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    special_tokens: dict[str, str],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    *,
    max_output_chars: int,
) -> tuple[str, list]:
    """The conversation as the template renders it (`tools` passed as apply_chat_template passes them), and the
    character spans inside `{% generation %}` blocks.

    TemplateOutputTooLong past `max_output_chars`, checked block by block so a loop stops early; one expression
    that builds a huge string at once is only bounded by the sandbox process's memory limit.
    """
    compiled = _compile(template)
    state = _Rendering()
    token = _tracking.set(state)
    try:
        for block in compiled.generate(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special_tokens,
        ):
            state.length += len(block)
            if state.length > max_output_chars:
                raise TemplateOutputTooLong(
                    f"the chat template renders this conversation to more than {max_output_chars:,} characters "
                    "(FT_TEMPLATE_MAX_OUTPUT_CHARS): shorten the conversation, or fix the template's loops"
                )
            state.blocks.append(block)
    finally:
        _tracking.reset(token)
    return "".join(state.blocks), state.spans


def has_generation_markers(template: str) -> bool:
    return GENERATION_TAG.search(template) is not None


@lru_cache(maxsize=1)
def trl_training_templates() -> dict[str, str]:
    """TRL's patched training templates (with generation markers) keyed by the template they replace.

    Read as files from the installed `trl` package without importing it (that would pull in torch); an API
    installed without trl has none, and a template without markers is then refused rather than guessed at.
    """
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    pairs = {}
    for training in folder.glob("*_training.jinja"):
        original = training.with_name(training.name.replace("_training.jinja", ".jinja"))
        if original.is_file():
            pairs[original.read_text(encoding="utf-8")] = training.read_text(encoding="utf-8")
    return pairs


def training_template_for(template: str) -> str | None:
    return trl_training_templates().get(template)
