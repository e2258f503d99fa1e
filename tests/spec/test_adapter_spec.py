"""The spec's `adapter`: defaults, each method's validation, refused combinations, and GPTQ/AWQ bases at submit."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.errors import Invalid, validation_detail
from app.fleet.prequantized import check_prequantized_base, quant_method
from app.spec.job import JobSpec
from tests.conftest import MODELS_DIR, TINY_MODEL


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"base_model": TINY_MODEL, "dataset": "ds_000000000000000000000000", **fields})


def refusal(**fields: Any) -> list[dict[str, str]]:
    """The {field, message} problems a 422 would carry for this spec."""
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    return validation_detail(caught.value.errors())[1]


def test_lora_stays_the_default_and_old_specs_keep_their_meaning() -> None:
    stored = spec(lora={"r": 8}).model_dump(mode="json")
    assert stored["adapter"] == {"method": "lora"}
    assert stored["lora"]["r"] == 8 and stored["quantization"]["bits"] == 4
    assert JobSpec.model_validate(stored) == spec(lora={"r": 8})  # a stored spec reads back as it was


def test_each_method_fills_in_peft_defaults() -> None:
    dump = {m: spec(adapter={"method": m}).adapter.model_dump() for m in ("dora", "rslora", "ia3", "prefix_tuning")}
    assert dump["dora"] == {"method": "dora"} and dump["rslora"] == {"method": "rslora"}
    assert dump["ia3"] == {"method": "ia3", "target_modules": None, "feedforward_modules": None}
    assert dump["prefix_tuning"] == {
        "method": "prefix_tuning",
        "num_virtual_tokens": 20,
        "prefix_projection": False,
        "encoder_hidden_size": None,
    }
    assert spec(adapter={"method": "prompt_tuning", "init_text": "Label it:"}).adapter.model_dump() == {
        "method": "prompt_tuning",
        "num_virtual_tokens": 20,
        "init": "text",
        "init_text": "Label it:",
    }
    assert spec(adapter={"method": "p_tuning"}).adapter.model_dump() == {
        "method": "p_tuning",
        "num_virtual_tokens": 20,
        "encoder_type": "mlp",
        "encoder_hidden_size": 128,
        "encoder_num_layers": 2,
        "encoder_dropout": 0.0,
    }


@pytest.mark.parametrize(
    ("adapter", "field", "words"),
    [
        ({"method": "adalora"}, "adapter", "'adalora'"),
        ({"method": "prompt_tuning"}, "adapter.prompt_tuning", "init_text is required"),
        ({"method": "prompt_tuning", "init": "random", "init_text": "x"}, "adapter.prompt_tuning", "not 'random'"),
        ({"method": "prompt_tuning", "init_text": "x", "num_virtual_tokens": 0}, "num_virtual_tokens", "1"),
        ({"method": "ia3", "target_modules": ["q_proj"]}, "adapter.ia3", "set feedforward_modules too"),
        ({"method": "ia3", "feedforward_modules": ["down_proj"]}, "adapter.ia3", "needs target_modules"),
        (
            {"method": "ia3", "target_modules": ["v_proj"], "feedforward_modules": ["down_proj"]},
            "adapter.ia3",
            "['down_proj'] extra",
        ),
        ({"method": "ia3", "target_modules": ["v_proj; rm"], "feedforward_modules": []}, "target_modules", "v_proj"),
        ({"method": "p_tuning", "encoder_num_layers": 3}, "adapter.p_tuning", "`lstm` encoder only, got 3"),
        ({"method": "prefix_tuning", "encoder_hidden_size": 64}, "adapter.prefix_tuning", "prefix_projection"),
        ({"method": "dora", "r": 4}, "adapter.dora.r", "unknown field"),  # rank lives in `lora`
    ],
)
def test_a_bad_setting_is_refused_by_name(adapter: dict[str, Any], field: str, words: str) -> None:
    problems = refusal(adapter=adapter)
    assert len(problems) == 1 and field in problems[0]["field"] and words in problems[0]["message"], problems


def test_combinations_that_cannot_train_are_refused_with_the_reason() -> None:
    [dora8] = refusal(adapter={"method": "dora"}, quantization={"bits": 8})
    assert "`dora` cannot train on an 8-bit base" in dora8["message"] and "quantization.bits 4" in dora8["message"]
    for method, extra in (("prefix_tuning", {}), ("prompt_tuning", {"init_text": "x"}), ("p_tuning", {})):
        [packed] = refusal(adapter={"method": method, **extra}, training={"packing": True})
        assert f"`{method}` cannot train with training.packing" in packed["message"]
    # what does train, seen on the CPU in tests/training/test_adapter_methods.py and by hand
    spec(adapter={"method": "dora"}, quantization={"bits": 4})
    spec(adapter={"method": "dora"}, quantization=None)
    spec(adapter={"method": "ia3"}, quantization={"bits": 8})
    spec(adapter={"method": "p_tuning"}, quantization={"bits": 8})
    spec(adapter={"method": "rslora"}, training={"packing": True})


def fake_prequantized(name: str, method: str) -> str:
    """A copy of the tiny model whose config.json says it ships GPTQ- or AWQ-quantized."""
    path = MODELS_DIR / name
    shutil.copytree(MODELS_DIR / TINY_MODEL, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": 128}
    (path / "config.json").write_text(json.dumps(config))
    return name


def test_quant_method_reads_gptq_and_awq_only() -> None:
    assert quant_method({"quantization_config": {"quant_method": "gptq"}}) == "gptq"
    assert quant_method({"quantization_config": {"quant_method": "AWQ"}}) == "awq"
    assert quant_method({"quantization_config": {"quant_method": "bitsandbytes"}}) is None
    assert quant_method({"model_type": "llama"}) is None


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_prequantized_base_is_never_quantized_twice(tiny_model: Path, method: str) -> None:
    base = fake_prequantized(f"tiny-{method}", method)

    defaulted = spec(base_model=base)
    check_prequantized_base(defaulted)
    assert defaulted.quantization is None  # the stored spec says what runs: LoRA on the base as it ships

    with pytest.raises(Invalid) as twice:
        check_prequantized_base(spec(base_model=base, quantization={"bits": 4}))
    assert twice.value.status_code == 422
    assert twice.value.extra["problems"][0]["field"] == "quantization"
    assert (
        f"already {method.upper()}-quantized" in twice.value.detail and "set quantization to null" in twice.value.detail
    )

    for ok in ("lora", "rslora"):
        check_prequantized_base(spec(base_model=base, quantization=None, adapter={"method": ok}))
    with pytest.raises(Invalid) as dora:
        check_prequantized_base(spec(base_model=base, quantization=None, adapter={"method": "dora"}))
    assert dora.value.extra["problems"][0]["field"] == "adapter.method" and "refuse DoRA" in dora.value.detail


def test_other_bases_are_left_alone(tiny_model: Path) -> None:
    plain = spec()
    check_prequantized_base(plain)
    assert plain.quantization is not None and plain.quantization.bits == 4
    offline = spec(base_model="owner/not-cached-anywhere")  # tests never reach the Hub: the worker decides
    check_prequantized_base(offline)
    assert offline.quantization is not None


def test_validate_reports_what_submit_refuses_for_a_prequantized_base(tiny_model: Path) -> None:
    """POST /jobs/validate lists the GPTQ refusal as a problem (ok: false) where POST /jobs answers 422."""
    from alembic import command
    from alembic.config import Config
    from fastapi.testclient import TestClient

    from app.core.db import SessionLocal
    from app.main import create_app
    from app.tenants.auth import create_key

    command.upgrade(Config(str(Path(__file__).resolve().parents[2] / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "gptq", tenant="gptq-tests")
        session.commit()
    api = TestClient(create_app(), headers={"Authorization": f"Bearer {key}"})
    rows = b'{"text": "a prequantized base"}\n' * 4
    dataset = api.post("/datasets", files={"file": ("gptq.jsonl", rows)}).json()["id"]
    body = {
        "base_model": fake_prequantized("tiny-gptq-validate", "gptq"),
        "dataset": dataset,
        "format": {"type": "text", "field": "text"},
        "quantization": {"bits": 4},
    }
    report = api.post("/jobs/validate", json=body)
    assert report.status_code == 200, report.text
    assert report.json()["ok"] is False
    assert report.json()["problems"][0]["field"] == "quantization"
    assert "GPTQ-quantized" in report.json()["problems"][0]["message"]
    refused = api.post("/jobs", json=body)
    assert refused.status_code == 422 and "GPTQ-quantized" in refused.json()["detail"]
    assert api.post("/jobs/validate", json={**body, "quantization": None}).json()["ok"] is True
