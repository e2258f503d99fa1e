"""A tiny random-weight Llama model and tokenizer, built locally, for smoke tests and demos without downloads."""

from pathlib import Path
from typing import Any

# Dimensions are multiples of 64 so every bitsandbytes kernel path (4-bit blocks, 8-bit) accepts them.
TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
}

# Renders tools (a system turn of JSON schemas) and assistant tool calls (<tool_call>JSON</tool_call>), like the
# families that support them; plain conversations render as they always did. `chat_template=` picks a built-in one.
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</s>\n{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{% if message['content'] %}{{ message['content'] }}"
    "{% endif %}{% for call in message['tool_calls'] or [] %}<tool_call>{{ call['function'] | tojson }}</tool_call>"
    "{% endfor %}</s>{% endgeneration %}"
    "{% else %}{{ message['content'] }}</s>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Special tokens of the built-in templates: a tiny model with one tokenizes its markers as the real models do.
TEMPLATE_TOKENS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Be yourself; everyone else is already taken. So many books, so little time. To be or not to be, that is
the question. I think, therefore I am. The only thing we have to fear is fear itself. Knowledge is power.
This movie was wonderful, great acting and a moving story. The food was terrible and the service slow.
positive negative neutral good bad happy sad love hate excellent awful amazing boring fantastic poor
user assistant system question answer instruction response input output label text prompt completion
0 1 2 3 4 5 6 7 8 9 , . ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # $ % & * + = < > | ~ ->:
"""


def make_tiny_model(
    out_dir: Path,
    vocab_size: int = 512,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    chat_template: str | None = "tiny",
) -> Path:
    """Write a Hugging Face model directory (safetensors, tokenizer with a chat template) and return it.

    `config` overrides LlamaConfig fields (dimensions, `vocab_size`; `dtype` for the saved weights), e.g. for a bigger
    benchmark model; keep the dimensions multiples of 64. `chat_template`: "tiny" (CHAT_TEMPLATE), a built-in name
    (`qwen2.5`, `llama3`, ...: app/spec/chat_templates/), or None for a base model without one.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from app.spec.templates import named_template

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[
            *["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"],
            *(TEMPLATE_TOKENS if chat_template not in (None, "tiny") else []),
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.split("\n") * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template is not None:
        tokenizer.chat_template = CHAT_TEMPLATE if chat_template == "tiny" else named_template(chat_template)
    tokenizer.save_pretrained(out_dir)

    fields: dict[str, Any] = {"vocab_size": len(tokenizer), "tie_word_embeddings": False, **TINY, **(config or {})}
    dtype = fields.pop("dtype", None)
    llama_config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
