"""Preference rows in TRL's, OpenAI's and ShareGPT's shapes, KTO's labelled answers, and the method/format rules."""

import pytest
from pydantic import ValidationError

from app.spec.examples import RowError, to_example
from app.spec.job import JobSpec
from app.spec.preference import PreferenceFormat, UnpairedPreferenceFormat

USER = [{"role": "user", "content": "Is the food good?"}]
NO = [{"role": "assistant", "content": "No."}]
YES = [{"role": "assistant", "content": "Yes."}]


def spec(method: dict, fmt: dict, **more: object) -> JobSpec:
    return JobSpec.model_validate(
        {"base_model": "tiny-llama", "dataset": "ds_000000000000000000000000", "method": method, "format": fmt, **more}
    )


def refused(fmt: object, row: dict) -> str:
    with pytest.raises(RowError) as caught:
        to_example(fmt, row, 4)
    assert caught.value.row == 4
    return caught.value.message


def test_the_three_pair_shapes_become_one_example() -> None:
    trl = {"prompt": USER, "chosen": NO, "rejected": YES}
    openai = {"input": {"messages": USER}, "preferred_output": NO, "non_preferred_output": YES}
    sharegpt = {
        "conversations": [{"from": "human", "value": "Is the food good?"}],
        "chosen": {"from": "gpt", "value": "No."},
        "rejected": {"from": "gpt", "value": "Yes."},
    }
    fmt = PreferenceFormat()
    expected = {"prompt": USER, "chosen": NO, "rejected": YES}
    assert to_example(fmt, trl, 1) == to_example(fmt, openai, 1) == to_example(fmt, sharegpt, 1) == expected
    text = to_example(fmt, {"prompt": "2+2=", "chosen": "4", "rejected": "5"}, 1)
    assert text == {"prompt": "2+2=", "chosen": "4", "rejected": "5"}


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"prompt": USER, "chosen": NO, "rejected": NO}, "chosen and rejected are identical"),
        ({"prompt": USER, "chosen": "", "rejected": YES}, "chosen is empty"),
        ({"prompt": USER, "chosen": NO}, "missing 'rejected'"),
        ({"prompt": USER, "chosen": "No.", "rejected": YES}, "prompt and answers must all be text or all be messages"),
        ({"prompt": [*USER, *NO], "chosen": NO, "rejected": YES}, "prompt ends with an assistant message"),
        ({"input": {"messages": USER}, "preferred_output": NO}, "non_preferred_output must be text or assistant"),
    ],
)
def test_bad_pairs_name_the_row_and_the_field(row: dict, words: str) -> None:
    assert words in refused(PreferenceFormat(), row)


def test_kto_reads_labelled_answers_and_refuses_labels_that_are_not_booleans() -> None:
    fmt = UnpairedPreferenceFormat()
    assert to_example(fmt, {"prompt": "2+2=", "completion": "4", "label": True}, 1) == {
        "prompt": "2+2=",
        "completion": "4",
        "label": True,
    }
    assert to_example(fmt, {"messages": [*USER, *NO], "label": False}, 1) == {
        "prompt": USER,
        "completion": NO,
        "label": False,
    }
    assert "label must be true or false, got 'yes'" in refused(fmt, {"prompt": "a", "completion": "b", "label": "yes"})
    assert "label must be true or false, got 1" in refused(fmt, {"prompt": "a", "completion": "b", "label": 1})


def test_methods_go_with_their_data() -> None:
    assert spec({"type": "dpo", "beta": 0.2}, {"type": "preference"}).method.beta == 0.2
    assert spec({"type": "kto"}, {"type": "unpaired_preference"}).method.desirable_weight == 1.0
    assert spec({"type": "simpo"}, {"type": "preference"}).method.gamma == 0.5
    for method, fmt, words in [
        ({"type": "dpo"}, {"type": "chat"}, 'method \'dpo\' trains on pairs: use format {"type": "preference"}'),
        ({"type": "kto"}, {"type": "preference"}, "method 'kto' trains on labelled answers"),
        ({"type": "sft"}, {"type": "preference"}, "format 'preference' is preference data: set method.type"),
        ({"type": "dpo", "loss_type": "magic"}, {"type": "preference"}, "loss_type"),
    ]:
        with pytest.raises(ValidationError, match=words.replace("(", r"\(")):
            spec(method, fmt)


def test_sft_only_settings_and_kto_batches_of_one_are_refused() -> None:
    with pytest.raises(ValidationError, match="needs training.batch_size of 2 or more"):
        spec({"type": "kto"}, {"type": "unpaired_preference"}, training={"batch_size": 1})
    with pytest.raises(ValidationError, match="training.load_best apply to method sft only"):
        spec({"type": "dpo"}, {"type": "preference"}, training={"load_best": True, "eval_fraction": 0.2})


def test_init_from_names_a_job() -> None:
    parent = "job_" + "0" * 24
    assert spec({"type": "dpo"}, {"type": "preference"}, init_from={"job": parent}).init_from.job == parent
    with pytest.raises(ValidationError, match="init_from.job"):
        spec({"type": "dpo"}, {"type": "preference"}, init_from={"job": "../etc"})
