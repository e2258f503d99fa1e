"""Chat templates by name: `format.chat_template: "chatml"` instead of pasting Jinja.

The training versions (assistant output inside `{% generation %}`) of common families, from TRL's
`trl/chat_templates/`, plus ChatML and the plain Alpaca layout of our own; the files are in chat_templates/.
"""

import re
from functools import cache
from pathlib import Path

FOLDER = Path(__file__).with_name("chat_templates")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,40}$")


@cache
def template_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in FOLDER.glob("*.jinja")))


def is_template_name(value: str) -> bool:
    """A name (`chatml`) rather than a Jinja template: templates always hold `{`."""
    return NAME.fullmatch(value) is not None


@cache
def named_template(name: str) -> str:
    """The template a name stands for; ValueError naming the choices when there is none."""
    if name not in template_names():
        raise ValueError(f"unknown chat template {name!r}; built-in ones: {', '.join(template_names())}")
    return (FOLDER / f"{name}.jinja").read_text(encoding="utf-8")


def resolve_template(value: str | None) -> str | None:
    """A spec's or the deployment's chat_template as Jinja: names looked up, templates as they are."""
    if value is None or not is_template_name(value):
        return value
    return named_template(value)
