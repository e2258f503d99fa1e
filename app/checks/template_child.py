"""The chat template sandbox's child process (app.checks.template_sandbox starts it): render, within limits.

Limits come in the request's header line and are set before any of the user's template runs: RLIMIT_AS (memory),
a wall-clock timer for all rows (its signal stops a Python-level loop), and RLIMIT_CPU as a backstop that ends the
process if the timer cannot (one long C call) and the parent is gone. It imports only jinja2 and chat_templates,
never the API's settings, and it exits after one request.
"""

import json
import os
import resource
import signal
import sys
from typing import Any

MEMORY_EXIT = 3  # the exit status when memory ran out and the error could not even be written


class _Deadline(BaseException):  # not an Exception, so no `except Exception` in jinja2 swallows it
    pass


class _Stop(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _Deadline


def _set_limits(memory_bytes: int, timeout_s: float) -> None:
    """Memory and CPU limits on this process, and a timer for the whole request's rendering."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(
        resource.RLIMIT_AS, (memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard), hard)
    )
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime + timeout_s) + 2
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cpu_hard == resource.RLIM_INFINITY or cpu < cpu_hard:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu_hard))
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)


def _say(stdout: Any, kind: str, message: str = "") -> bool:
    try:
        stdout.write(json.dumps({"kind": kind, "message": message}).encode() + b"\n")
        stdout.flush()
        return True
    except MemoryError:
        return False


def serve(render: Any, stdin: Any, stdout: Any) -> None:
    """Read the header and the conversations, write a `[text, spans]` line each, or one error line and stop."""
    header = stdin.readline()
    if not header:
        return  # a spare its API process never used
    job = json.loads(header)
    _set_limits(job["memory_bytes"], job["timeout_s"])
    total = 0
    try:
        for line in stdin:
            conversation = json.loads(line)
            text, spans = render(
                job["template"],
                conversation["messages"],
                job["special_tokens"],
                conversation.get("tools"),
                conversation.get("add_generation_prompt", False),
                max_output_chars=job["max_output_chars"],
            )
            total += len(text)
            if total > job["memory_bytes"]:  # what the API would hold of this request's rendered text
                raise _Stop("total")
            stdout.write(json.dumps([text, spans]).encode() + b"\n")
    except _Deadline:
        _say(stdout, "timeout")
    except MemoryError:
        if not _say(stdout, "memory"):
            os._exit(MEMORY_EXIT)
    except RecursionError:
        _say(stdout, "recursion")
    except _Stop as stop:
        _say(stdout, stop.kind)
    except Exception as exc:  # the template's own error (raise_exception, bad syntax, a sandbox refusal)
        _say(stdout, "template", str(exc) or type(exc).__name__)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    """Import jinja2 and build the environment first, so a spare child waits ready for its request."""
    from app.checks import chat_templates

    chat_templates._environment()
    serve(chat_templates.render_chat, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
