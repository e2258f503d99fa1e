"""Exact loss masks on the tiny model, read from the batch the real SFTTrainer feeds it, and the API's copy of them.

POST /jobs/validate computes masks without torch (app.checks.tokenization); these tests hold it to what TRL does.
"""

from pathlib import Path

import pytest
from trl import SFTTrainer

from app.checks.tokenization import choose_chat_template, read_model_tokenizer, tokenize_example
from app.spec.examples import to_example
from app.spec.job import JobSpec
from tests.conftest import TINY_MODEL
from worker.training import causal_lm, data
from worker.training import model as modelling

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is the food good?"},
    {"role": "assistant", "content": "The food was terrible."},
    {"role": "user", "content": "And the movie?"},
    {"role": "assistant", "content": "This movie was wonderful."},
]


def _spec(fmt: dict, base_model: str = TINY_MODEL, **training: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "base_model": base_model,
            "dataset": "ds_000000000000000000000000",
            "format": fmt,
            "quantization": None,
            "training": {"batch_size": 1, "max_steps": 1, "optimizer": "adamw_torch", **training},
        }
    )


def trainer_batch(spec: JobSpec, row: dict, tmp_path: Path) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of the first batch the recipe's SFTTrainer would train on for this one row."""
    tokenizer = modelling.load_tokenizer(spec.base_model)
    data.use_chat_template(spec, tokenizer)
    trainer = SFTTrainer(
        model=modelling.add_lora(modelling.load_model(spec), spec),
        args=causal_lm._training_args(spec, tmp_path, has_eval=False),
        train_dataset=data.tokenized(spec, tokenizer, data.build_examples(spec, [row])),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()


def api_mask(spec: JobSpec, row: dict, model_dir: Path) -> tuple[list[int], list[bool]]:
    """What POST /jobs/validate computes for the row, without torch."""
    tok = read_model_tokenizer(model_dir)
    t = spec.training
    item = tokenize_example(
        tok,
        to_example(spec.format, row, 1),
        chat_template=choose_chat_template(spec.format, spec.base_model, tok.chat_template).template,
        max_length=t.max_seq_length,
        keep_end=t.truncation_side == "left",
        train_on_inputs=getattr(spec.format, "train_on_inputs", False),
    )
    return item.ids, item.trained


def _decode(tiny_model: Path, ids: list[int]) -> str:
    return read_model_tokenizer(tiny_model).tokenizer.decode(ids, skip_special_tokens=False)


def test_prompt_completion_trains_the_completion_only(tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec({"type": "prompt_completion", "prompt": "{review} ->:", "completion": " {label}"})
    row = {"review": "The food was terrible.", "label": "negative"}
    ids, labels = trainer_batch(spec, row, tmp_path)
    n_prompt = labels.index(next(x for x in labels if x != -100))
    assert n_prompt > 0 and all(x == -100 for x in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]  # every completion token, the EOS included, carries loss
    assert _decode(tiny_model, ids[:n_prompt]) == "The food was terrible. ->:"
    assert _decode(tiny_model, ids[n_prompt:]) == " negative</s>"
    api_ids, trained = api_mask(spec, row, tiny_model)
    assert api_ids == ids and trained == [x != -100 for x in labels]


def test_chat_trains_assistant_turns_only(tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec({"type": "chat"})
    row = {"messages": CHAT}
    ids, labels = trainer_batch(spec, row, tmp_path)
    trained_runs, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            trained_runs.append(run)
            run = []
    if run:
        trained_runs.append(run)
    assert [_decode(tiny_model, r) for r in trained_runs] == [
        "The food was terrible.</s>",
        "This movie was wonderful.</s>",
    ]
    untrained = _decode(tiny_model, [t for t, label in zip(ids, labels, strict=True) if label == -100])
    assert "Be brief." in untrained and "Is the food good?" in untrained and "<|assistant|>" in untrained
    api_ids, trained = api_mask(spec, row, tiny_model)
    assert api_ids == ids and trained == [x != -100 for x in labels]


@pytest.mark.parametrize(
    "fmt", [{"type": "text", "field": "text"}, {"type": "template", "template": "{text} ->: {tags}"}]
)
def test_text_and_template_train_every_token(fmt: dict, tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec(fmt)
    row = {"text": "So many books, so little time.", "tags": ["books", "humor"]}
    ids, labels = trainer_batch(spec, row, tmp_path)
    assert labels == ids and ids[-1] == 1  # the EOS is appended and trained
    expected = "So many books, so little time." + (" ->: ['books', 'humor']" if fmt["type"] == "template" else "")
    assert _decode(tiny_model, ids) == expected + "</s>"
    assert api_mask(spec, row, tiny_model) == (ids, [True] * len(ids))


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_side_matches_the_trainer(side: str, tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec({"type": "prompt_completion"}, max_seq_length=8, truncation_side=side)
    row = {"prompt": "A journey", "completion": " of a thousand miles begins with a single step."}
    ids, labels = trainer_batch(spec, row, tmp_path)
    assert len(ids) == 8
    assert _decode(tiny_model, ids).endswith("step.</s>") == (side == "left")
    assert _decode(tiny_model, ids).startswith("A journey") == (side == "right")
    api_ids, trained = api_mask(spec, row, tiny_model)
    assert api_ids == ids and trained == [x != -100 for x in labels]


def test_an_example_cut_down_to_its_prompt_is_dropped(tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec({"type": "prompt_completion"}, max_seq_length=8)
    row = {"prompt": "A journey of a thousand miles begins", "completion": " with a single step."}
    with pytest.raises(ValueError, match="num_samples"):  # TRL filtered the only example out: nothing to batch
        trainer_batch(spec, row, tmp_path)
    ids, trained = api_mask(spec, row, tiny_model)
    assert len(ids) == 8 and not any(trained)  # what the API counts as `dropped`
