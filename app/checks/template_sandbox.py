"""Chat templates rendered for POST /jobs/validate and POST /jobs in a child process with memory and time limits.

jinja2's sandbox stops a template from reaching into Python, not from `{{ 'x' * 10**9 }}` or a loop of 10**10:
in the API's own process either would take it down. So every chat template the checks render that this service
does not ship (the spec's Jinja, the model's, which may come from a file anyone uploaded to the hub, the
deployment's FT_DEFAULT_CHAT_TEMPLATE) runs here in a child (`python -m app.checks.template_child`) with RLIMIT_AS
at FT_TEMPLATE_MEMORY_BYTES, a timer and RLIMIT_CPU at FT_TEMPLATE_RENDER_TIMEOUT_S for all of a request's rows,
and FT_TEMPLATE_MAX_OUTPUT_CHARS per row. Shipped ones (app/spec/chat_templates/ and TRL's, told by their exact
text) loop only over the data, so they render in process, under the same output cap, at no extra cost.

One child serves one request, so no state crosses requests or tenants: it gets a header line (template, special
tokens, limits), then one JSON line per conversation, and answers a `[text, spans]` line per conversation or
one error line naming what stopped it. A spare child is started after each run, so a request finds one with
jinja2 already imported (spawning and importing cost ~0.1 s). The child sees none of the API's environment.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.checks.chat_templates import render_chat, trl_training_templates
from app.checks.template_child import MEMORY_EXIT
from app.core.config import settings
from app.spec.templates import named_template, template_names

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `app`, so `-m` finds it
ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")  # all the child inherits
CONCURRENT_CHILDREN = 4  # per API process: bounds the memory sandboxes hold to 4 x FT_TEMPLATE_MEMORY_BYTES
GRACE_S = 2.0  # the child stops itself at the deadline; the parent kills it this much later

Rendered = list[tuple[str, list[tuple[int, int]]]]  # per conversation: the text and its generation spans

_slots = threading.BoundedSemaphore(CONCURRENT_CHILDREN)
_spare_lock = threading.Lock()
_spare: tuple[int, subprocess.Popen] | None = None  # (owning pid, child): a forked API process starts its own


class TemplateRenderError(Exception):
    """A conversation the template could not render within the limits; `index` is its place in the request."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index
        self.message = message


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.0f} MiB"


def _limit_messages() -> dict[str, str]:
    timeout = f"{settings.template_render_timeout_s:g}"
    return {
        "memory": f"the chat template used more than {_mib(settings.template_memory_bytes)} "
        "(FT_TEMPLATE_MEMORY_BYTES) rendering this conversation: fix the template (a huge repeat or loop)",
        "timeout": f"the chat template took longer than {timeout} s (FT_TEMPLATE_RENDER_TIMEOUT_S, for all rows of "
        "a request) and was stopped while rendering this conversation: fix the template's loops",
        "total": f"the rendered conversations up to this one total more than {settings.template_memory_bytes:,} "
        "characters, the most one request renders (FT_TEMPLATE_MEMORY_BYTES): shorten the template's output",
        "recursion": "the chat template recursed deeper than Python allows (a macro calling itself without end)",
    }


def _spawn() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.checks.template_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=PACKAGE_ROOT,
        env={name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
        start_new_session=True,  # a terminal's Ctrl-C reaches the API only; a child ends when its stdin closes
    )


def _take_child() -> subprocess.Popen:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare[0] == os.getpid() and spare[1].poll() is None:
        return spare[1]
    return _spawn()


def _start_spare() -> None:
    global _spare
    with _spare_lock:
        if _spare is None or _spare[0] != os.getpid():
            _spare = (os.getpid(), _spawn())


def _request(template: str, special_tokens: dict[str, str], conversations: list[dict[str, Any]]) -> bytes:
    header = {
        "template": template,
        "special_tokens": special_tokens,
        "memory_bytes": settings.template_memory_bytes,
        "timeout_s": settings.template_render_timeout_s,
        "max_output_chars": settings.template_max_output_chars,
    }
    lines = [json.dumps(header)]
    for index, conversation in enumerate(conversations):
        try:
            lines.append(json.dumps(conversation, default=str))
        except (ValueError, RecursionError) as exc:  # a value nested too deeply for JSON
            raise TemplateRenderError(index, f"this conversation cannot be rendered: {exc}") from None
    return ("\n".join(lines) + "\n").encode()


@lru_cache(maxsize=1)
def _shipped_templates() -> frozenset[str]:
    trl = trl_training_templates()
    return frozenset([*(named_template(name) for name in template_names()), *trl, *trl.values()])


def is_shipped(template: str) -> bool:
    """One of the templates this service or TRL ships, by its exact text: safe to render in process."""
    return template in _shipped_templates()


def _render_here(template: str, special_tokens: dict[str, str], conversations: list[dict[str, Any]]) -> Rendered:
    out = []
    for index, c in enumerate(conversations):
        try:
            out.append(
                render_chat(
                    template,
                    c["messages"],
                    special_tokens,
                    c.get("tools"),
                    c.get("add_generation_prompt", False),
                    max_output_chars=settings.template_max_output_chars,
                )
            )
        except Exception as exc:  # the template raised on this conversation (raise_exception, a bad value)
            raise TemplateRenderError(index, str(exc) or type(exc).__name__) from None
    return out


def render_conversations(
    template: str, special_tokens: dict[str, str], conversations: list[dict[str, Any]]
) -> Rendered:
    """Each conversation (`messages`, `tools`, `add_generation_prompt`) as render_chat renders it: in a child
    process unless the template is a shipped one.

    TemplateRenderError on the first conversation the template fails on or runs out of memory or time with.
    """
    if not conversations:
        return []
    if is_shipped(template):
        return _render_here(template, special_tokens, conversations)
    payload = _request(template, special_tokens, conversations)
    timed_out = False
    with _slots:
        child = _take_child()
        try:
            out, err = child.communicate(payload, timeout=settings.template_render_timeout_s + GRACE_S)
        except subprocess.TimeoutExpired:  # stuck in one C call its own timer cannot interrupt: rare, so the row
            # named is the first whose result had not come through the child's output buffer
            timed_out = True
            child.kill()
            out, err = child.communicate()
        finally:
            _start_spare()
    lines = out.split(b"\n")[:-1]  # whole lines only: a killed child can leave half of one
    results = [json.loads(line) for line in lines if line.startswith(b"[")]
    if len(results) == len(conversations) and child.returncode == 0:
        return [(text, [(start, end) for start, end in spans]) for text, spans in results]
    index = min(len(results), len(conversations) - 1)
    raise TemplateRenderError(index, _failure(child.returncode, timed_out, lines, err))


def _failure(returncode: int, timed_out: bool, lines: list[bytes], err: bytes) -> str:
    """What stopped the child: its own error line, else how it ended."""
    messages = _limit_messages()
    if lines and lines[-1].startswith(b"{"):
        error = json.loads(lines[-1])
        return messages.get(error["kind"], error["message"])
    if timed_out or returncode == -signal.SIGXCPU:
        return messages["timeout"]
    if returncode in (MEMORY_EXIT, -signal.SIGKILL):  # SIGKILL that was not ours: the kernel's OOM killer
        return messages["memory"]
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return f"the chat template sandbox stopped (exit status {returncode}: {tail[0]})"
