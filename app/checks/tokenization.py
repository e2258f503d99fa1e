"""Token ids and loss masks without torch, mirroring what TRL's SFTTrainer feeds the model.

The base model's `tokenizer.json` runs through the `tokenizers` library and chat templates through a sandboxed
jinja2 with the `{% generation %}` tag, the way transformers' `apply_chat_template` renders them. The steps follow
`SFTTrainer._prepare_dataset` (TRL 1.16): EOS appended to text and completions, the prompt's tokens masked up
to where prompt and prompt+completion diverge, assistant spans from the template, then truncation to
`max_length`; examples left with no trained token are dropped. tests/training/test_label_masks.py holds the two
together.
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.checks.chat_templates import has_generation_markers, render_chat, training_template_for
from app.checks.template_sandbox import TemplateRenderError, render_conversations
from app.core.config import settings
from app.datasets.access import ANONYMOUS, HubAccess, check_base_model
from app.datasets.hub import HubUnavailable, hub_model_files
from app.spec.formats import CONVERSATIONAL, AlpacaFormat
from app.spec.templates import is_template_name, named_template, resolve_template


@dataclass
class ModelTokenizer:
    """What the checks need of a model's tokenizer: the fast tokenizer, its special tokens and chat template."""

    tokenizer: Any  # tokenizers.Tokenizer, imported when first needed to keep the API's start fast
    special_tokens: dict[str, str]
    chat_template: str | None

    @property
    def eos_token(self) -> str:
        return self.special_tokens.get("eos_token", "")


@dataclass
class Tokenized:
    """One example as the trainer sees it: ids after truncation and, per id, whether it carries loss."""

    ids: list[int]
    trained: list[bool]
    full_length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.ids)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_model_tokenizer(directory: Path) -> ModelTokenizer:
    """A tokenizer from a Hugging Face model directory (tokenizer.json, tokenizer_config.json, chat_template)."""
    return _read_cached(str(directory), (directory / "tokenizer.json").stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _read_cached(directory: str, _mtime: int) -> ModelTokenizer:
    root = Path(directory)
    config: dict[str, Any] = {}
    if (root / "tokenizer_config.json").is_file():
        config = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
    special = {
        key: text
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if (text := _token_text(config.get(key))) is not None
    }
    template = config.get("chat_template")
    if isinstance(template, list):  # named variants: the default one is what apply_chat_template uses
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (root / "chat_template.jinja").is_file():  # transformers 5 saves the template beside the config
        template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    return ModelTokenizer(Tokenizer.from_file(str(root / "tokenizer.json")), special, template)


@dataclass
class TemplateChoice:
    """The chat template a conversational job trains with, and a warning when it is not the model's own."""

    template: str | None
    warning: str | None = None


def choose_chat_template(fmt: Any, base_model: str, model_template: str | None) -> TemplateChoice:
    """The spec's template (by name or Jinja), else the model's, else the plain Alpaca layout (alpaca jobs) or the
    deployment's FT_DEFAULT_CHAT_TEMPLATE; TRL's training variant (with generation markers) where it has one.

    The worker calls this too, so a job trains with the template its validation showed. ValueError: an unknown name.
    """
    if not isinstance(fmt, CONVERSATIONAL) and fmt.type not in ("preference", "unpaired_preference"):
        return TemplateChoice(None)
    choice = TemplateChoice(resolve_template(fmt.chat_template) or model_template)
    if choice.template is None and isinstance(fmt, AlpacaFormat):
        choice = TemplateChoice(
            named_template("alpaca"),
            f"{base_model!r} has no chat template: the rows are laid out the plain Alpaca way "
            "(### Instruction / ### Response); give format.chat_template to use another",
        )
    elif choice.template is None and settings.default_chat_template:
        name = settings.default_chat_template if is_template_name(settings.default_chat_template) else "Jinja"
        choice = TemplateChoice(
            resolve_template(settings.default_chat_template),
            f"{base_model!r} has no chat template: the deployment's default ({name}, FT_DEFAULT_CHAT_TEMPLATE) is "
            "used; give format.chat_template to choose another",
        )
    if choice.template and not has_generation_markers(choice.template):
        choice.template = training_template_for(choice.template) or choice.template
    return choice


def _mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    # The same single pass as transformers' assistant mask: a token is trained if it overlaps a generation span.
    mask, span = [False] * len(offsets), 0
    for i, (start, end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        mask[i] = end > spans[span][0]
    return mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _weighted_spans(spans: list[tuple[int, int]], messages: list[dict[str, Any]]) -> tuple[list, list]:
    """The template's generation spans split into trained ones and those of weight-0 assistant turns."""
    assistant = [m for m in messages if m["role"] == "assistant"]
    if all(m.get("weight", 1) for m in assistant):
        return spans, []
    if len(spans) != len(assistant):
        raise ValueError(
            f"the chat template marks {len(spans)} {{% generation %}} blocks for {len(assistant)} assistant messages, "
            "so per-message weights cannot be told apart: use a template with one block per assistant message"
        )
    kept = [span for span, m in zip(spans, assistant, strict=True) if m.get("weight", 1)]
    return kept, [span for span in spans if span not in kept]


NO_TEMPLATE = "no chat template"


def render_examples(
    tok: ModelTokenizer, chat_template: str | None, examples: list[dict[str, Any]]
) -> list[tuple[str, list[tuple[int, int]]] | None]:
    """Each chat example's text and generation spans (None for the others), all rendered in one sandbox run.

    TemplateRenderError naming the example's index when one fails or the template runs out of memory or time.
    """
    chats = [i for i, example in enumerate(examples) if "messages" in example]
    rendered: list[tuple[str, list[tuple[int, int]]] | None] = [None] * len(examples)
    if chats and not chat_template:
        raise TemplateRenderError(chats[0], NO_TEMPLATE)
    conversations = [{"messages": examples[i]["messages"], "tools": examples[i].get("tools")} for i in chats]
    try:
        texts = render_conversations(chat_template or "", tok.special_tokens, conversations)
    except TemplateRenderError as exc:
        raise TemplateRenderError(chats[exc.index], exc.message) from None
    for i, text in zip(chats, texts, strict=True):
        rendered[i] = text
    return rendered


def tokenize_example(
    tok: ModelTokenizer,
    example: dict[str, Any],
    *,
    chat_template: str | None,
    max_length: int,
    keep_end: bool,
    train_on_inputs: bool = False,
    rendered: tuple[str, list[tuple[int, int]]] | None = None,
) -> Tokenized:
    """One example in TRL's shape -> the ids and loss mask the trainer builds for it.

    Chat: the assistant turns' generation spans carry loss, less those of weight-0 turns; `train_on_inputs`: every
    token but the weight-0 turns'. Prompt/completion: the completion (`train_on_inputs`: all). Text: all.
    `rendered`: the chat as render_examples rendered it in the sandbox; without it (the worker) it is rendered here.
    """
    eos = tok.eos_token
    if "messages" in example:
        if not chat_template:
            raise ValueError(NO_TEMPLATE)
        text, spans = rendered or render_chat(
            chat_template,
            example["messages"],
            tok.special_tokens,
            example.get("tools"),
            max_output_chars=settings.template_max_output_chars,
        )
        enc = tok.tokenizer.encode(text, add_special_tokens=False)
        ids = enc.ids
        trained_spans, excluded = _weighted_spans(spans, example["messages"])
        if train_on_inputs:
            trained = [not masked for masked in _mask_from_spans(enc.offsets, excluded)]
        else:
            trained = _mask_from_spans(enc.offsets, trained_spans)
    elif "prompt" in example:
        completion = example["completion"] if example["completion"].endswith(eos) else example["completion"] + eos
        prompt_ids = tok.tokenizer.encode(example["prompt"]).ids
        enc = tok.tokenizer.encode(example["prompt"] + completion)
        ids = enc.ids
        n_prompt = 0 if train_on_inputs else _common_prefix(prompt_ids, ids)
        trained = [i >= n_prompt for i in range(len(ids))]
    else:
        text = example["text"] if example["text"].endswith(eos) else example["text"] + eos
        enc = tok.tokenizer.encode(text)
        ids = enc.ids
        trained = [True] * len(ids)
    full = len(ids)
    cut = slice(-max_length, None) if keep_end else slice(None, max_length)
    return Tokenized(ids[cut], trained[cut], full)


def describe(tok: ModelTokenizer, item: Tokenized) -> dict[str, str]:
    """The text the model reads and the part that carries loss (trained runs joined by ` … `)."""
    runs: list[list[int]] = []
    for i, (token, trained) in enumerate(zip(item.ids, item.trained, strict=True)):
        if trained:
            if i and item.trained[i - 1] and runs:
                runs[-1].append(token)
            else:
                runs.append([token])
    decode = tok.tokenizer.decode
    return {
        "text": decode(item.ids, skip_special_tokens=False),
        "trained": " … ".join(decode(run, skip_special_tokens=False) for run in runs),
    }


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def load_tokenizer(base_model: str, access: HubAccess = ANONYMOUS) -> ModelTokenizer:
    """The base model's tokenizer: a directory in FT_MODELS_DIR, else its tokenizer files from the Hub, read as the
    tenant (its allow-list, its Hub token)."""
    root = check_base_model(access, base_model) or hub_model_files(base_model, TOKENIZER_FILES, access)
    if root is None or not (root / "tokenizer.json").is_file():
        raise HubUnavailable(f"{base_model!r} has no tokenizer.json, which the checks need")
    return read_model_tokenizer(root)
