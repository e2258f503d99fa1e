"""Schemathesis hooks for tests/integration/test_schemathesis.py (loaded by the CLI via SCHEMATHESIS_HOOKS).

The fuzzer's random ids would only ever find nothing, so ids that exist are mixed in: the fuzzing tenant's
own (to reach the code behind a found job or dataset) and another tenant's (which must stay out of reach).
A custom check fails any response that lets the other tenant's things through.
"""

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

IDS = json.loads(os.environ.get("FT_FUZZ_IDS", "{}"))
OWN: dict[str, list[str]] = IDS.get("own", {})
VICTIM: dict[str, Any] = IDS.get("victim", {})
VICTIM_IDS = [*VICTIM.get("job", []), *VICTIM.get("dataset", [])]
KINDS = {"job_id": "job", "dataset_id": "dataset", "file_id": "dataset", "after": None, "dataset": "dataset"}


def _choices(name: str) -> list[str]:
    kind = KINDS.get(name)
    kinds = ["job", "dataset"] if kind is None else [kind]
    return [i for k in kinds for i in [*OWN.get(k, []), *VICTIM.get(k, [])]]


def _mixed(values: Any, names: list[str]) -> st.SearchStrategy:
    """The drawn values, or the same with one id swapped for an existing one (own or the victim's)."""
    if not isinstance(values, dict):
        return st.just(values)
    options = [st.just(values)]
    for name in names:
        if name in values and _choices(name):
            options.append(st.sampled_from(_choices(name)).map(lambda v, n=name: {**values, n: v}))
    return st.one_of(options)


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy:
    return _mixed(path_parameters, ["job_id", "dataset_id", "file_id"])


@schemathesis.hook
def flatmap_query(context: Any, query: Any) -> st.SearchStrategy:
    return _mixed(query, ["after"])


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    return _mixed(body, ["dataset"])


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but one false alarm: an upload's `file` part "violating" `format: binary`.

    A file part is bytes, any bytes; whatever the fuzzer puts there is a file, accepted or refused by its content.
    """
    upload = case.method == "POST" and case.operation.path in ("/datasets", "/v1/files")
    file_part = getattr(failure, "code", "") == "ST201" and "/properties/file " in (failure.message or "")
    return not (upload and file_part)


@schemathesis.check
def no_cross_tenant(ctx: Any, response: Any, case: Any) -> bool | None:
    """The other tenant's ids and name never come back, and a request naming them never succeeds."""
    text = response.text or ""
    sent = json.dumps([case.path_parameters, case.query, case.body], default=str)
    # An error may quote the id it was sent; anything else of the other tenant's in a response is a leak.
    leaked = [v for v in [*VICTIM_IDS, VICTIM.get("tenant")] if v and v in text and v not in sent]
    if leaked:
        raise AssertionError(f"the response carries another tenant's {leaked}")
    named = [v for v in VICTIM_IDS if v in sent]
    if named and 200 <= response.status_code < 300 and not _reported_not_found(response, named):
        raise AssertionError(f"a request naming another tenant's {named} got {response.status_code}")
    return None


def _reported_not_found(response: Any, named: list[str]) -> bool:
    """POST /jobs/validate answers 200 with its problems listed: another tenant's id must be one, as "not found"."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict) or body.get("ok") is not False:
        return False
    problems = " ".join(str(p.get("message", "")) for p in body.get("problems") or [] if isinstance(p, dict))
    return all(f"{v!r} not found" in problems for v in named)
