"""Test-wide setup: a throwaway FT_DATA_DIR for in-process code, and one tiny local model for everything."""

import os
import secrets
import tempfile
from pathlib import Path

import pytest

# Set before any `app` import: app.core.config reads the environment once.
SESSION_DIR = Path(tempfile.mkdtemp(prefix="ft-tests-"))
MODELS_DIR = SESSION_DIR / "models"
os.environ["FT_DATA_DIR"] = str(SESSION_DIR / "in-process")
os.environ["FT_MODELS_DIR"] = str(MODELS_DIR)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process tests queue real Celery messages: they go to Redis db 7 under this session's own queue names, never
# into the `training` queue of db 0 that `make demo`'s worker reads (it would wade through them first), and are
# deleted when the session ends.
TEST_REDIS_URL = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
_QUEUE_SUFFIX = secrets.token_hex(4)
os.environ["FT_REDIS_URL"] = TEST_REDIS_URL
os.environ["FT_TRAINING_QUEUE"] = f"training-inproc-{_QUEUE_SUFFIX}"
os.environ["FT_INFERENCE_QUEUE"] = f"inference-inproc-{_QUEUE_SUFFIX}"

TINY_MODEL = "tiny-llama"
TINY_QWEN = "tiny-qwen"
TINY_BASE = "tiny-base"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny random-weight Llama (what `ftctl models make-tiny` writes) in FT_MODELS_DIR."""
    from worker.training.tiny import make_tiny_model

    path = MODELS_DIR / TINY_MODEL
    if not (path / "config.json").exists():
        make_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen() -> Path:
    """The tiny model with Qwen2.5's real, tool-capable training template (`make-tiny --chat-template qwen2.5`)."""
    from worker.training.tiny import make_tiny_model

    path = MODELS_DIR / TINY_QWEN
    if not (path / "config.json").exists():
        make_tiny_model(path, chat_template="qwen2.5")
    return path


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    """The tiny model with no chat template at all, as most base checkpoints (`make-tiny --chat-template none`)."""
    from worker.training.tiny import make_tiny_model

    path = MODELS_DIR / TINY_BASE
    if not (path / "config.json").exists():
        make_tiny_model(path, chat_template=None)
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete what this session queued (Celery keeps one list per priority: `<queue>`, `<queue>\\x06\\x169`, ...)."""
    import redis

    try:
        client = redis.Redis.from_url(TEST_REDIS_URL)
        for key in client.scan_iter(match=f"*-inproc-{_QUEUE_SUFFIX}*", count=1000):
            client.delete(key)
        client.close()
    except redis.RedisError:
        pass  # Redis gone already: nothing of ours is left to read either


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return SESSION_DIR


SLOW_FOLDERS = {"integration": "integration", "training": "training"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by folder: tests/integration/ starts real processes, tests/training/ trains real models; the rest is
    `make test-fast` (no processes, no training). Tests marked `one_database` run on the PostgreSQL stack only."""
    for item in items:
        parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in SLOW_FOLDERS:
            item.add_marker(SLOW_FOLDERS[parts[0]])
    other = [item for item in items if item.get_closest_marker("one_database") and _stack_of(item) == "sqlite"]
    if other:
        config.hook.pytest_deselected(items=other)
        skipped = {id(item) for item in other}
        items[:] = [item for item in items if id(item) not in skipped]


def _stack_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("stack") if callspec is not None else None


# The real vLLM server (session-scoped: started once, by whichever test first needs it). Imported last: it reads
# TINY_MODEL from this module.
from tests.vllm_server import running_vllm_server  # noqa: E402, F401
