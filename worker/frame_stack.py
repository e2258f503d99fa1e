"""Run a deep Python call (a training loop) inside one large frame-stack chunk, so CPython never thrashes chunks.

CPython 3.11+ keeps a thread's frames in chunks, 16 KiB by default; a frame that does not fit in the current chunk
maps a new one, and returning from the first frame of a chunk unmaps it again. A hot loop whose call depth
oscillates across a chunk boundary (forward, backward and checkpointing recursions, layer after layer, step after
step) then maps and unmaps memory thousands of times a second. The Celery worker's deeper stack put the trainer
right on such a boundary: 4x the page faults and ~10% fewer tokens/s than the same job in a plain process
(docs/benchmarks.md).

`call(fn)` calls fn from a function whose frame is large (half a MiB of local slots, never touched), so CPython
maps one chunk of about 1 MiB for it and every frame below it fits there: no chunk is mapped or unmapped until
fn returns. The function is compiled at import (~0.2 s), in the Celery worker's parent, so its pool children
inherit it.
"""

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
SLOTS = 1 << 16  # local variable slots of the roomy frame: 64Ki x 8 bytes

_SOURCE = (
    "def roomy(fn, args, kwargs):\n"
    "    if fn is None:  # never true: the slots only size the frame\n"
    + "".join(f"        _{i} = 0\n" for i in range(SLOTS))
    + "    return fn(*args, **kwargs)\n"
)
_namespace: dict[str, Any] = {}
exec(compile(_SOURCE, "<worker.frame_stack>", "exec"), _namespace)
_roomy: Callable[..., Any] = _namespace["roomy"]


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), with every frame below it in one roomy chunk; its result or its exception."""
    return _roomy(fn, args, kwargs)
