"""The Idempotency-Key's request hash (app/jobs/service.py): the same job however it is spelled, another job
apart, and unchanged by a field a release adds with a default."""

from app.jobs.service import legacy_request_hash, request_hash
from app.spec.job import JobSpec
from tests.conftest import TINY_MODEL

BODY = {"base_model": TINY_MODEL, "dataset": "ds_000000000000000000000000", "training": {"max_steps": 5}}


def test_defaults_spelled_out_hash_as_left_out() -> None:
    bare = JobSpec.model_validate(BODY)
    spelled = JobSpec.model_validate({**BODY, "integrations": [], "lora": {"r": bare.lora.r}})
    assert request_hash(spelled) == request_hash(bare)


def test_a_field_left_at_its_default_is_not_in_the_hash() -> None:
    dumped = JobSpec.model_validate(BODY).model_dump(mode="json", exclude_defaults=True)
    assert "integrations" not in dumped and "lora" not in dumped  # what a later release adds cannot move the hash
    assert dumped["training"] == {"max_steps": 5}


def test_another_job_hashes_apart_and_the_legacy_hash_is_the_full_dump() -> None:
    one, other = JobSpec.model_validate(BODY), JobSpec.model_validate({**BODY, "training": {"max_steps": 6}})
    assert request_hash(one) != request_hash(other)
    assert legacy_request_hash(one) != request_hash(one)  # jobs recorded before keep replaying by this one
