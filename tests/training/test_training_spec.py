"""The spec saved beside an adapter (training_spec.json) carries no webhook token: the adapter is what gets shared."""

import json
from pathlib import Path

from app.spec.job import JobSpec
from worker.training.result import write_training_spec


def test_the_saved_training_spec_redacts_the_webhook_url(tmp_path: Path) -> None:
    url = "https://hooks.example.com/services/T0001/B0002/XyZ9aBcDeFgHiJkLmNoPqRsT?token=s3cret"
    spec = JobSpec.model_validate({"base_model": "tiny", "dataset": "ds_" + "0" * 24, "webhook_url": url})
    write_training_spec(tmp_path, spec)
    text = (tmp_path / "training_spec.json").read_text()
    assert "s3cret" not in text and "XyZ9aBcDeFgHiJkLmNoPqRsT" not in text
    saved = json.loads(text)
    assert saved["webhook_url"].startswith("https://hooks.example.com/")
    assert saved["base_model"] == "tiny"
