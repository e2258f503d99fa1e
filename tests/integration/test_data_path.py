"""The data path on the real stack: every file type in, checks before submit (/jobs/validate), a chat job trained."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.integration.conftest import ONE_DATABASE, Stack

REVIEWS = [
    ("The food was terrible and the service slow.", "negative"),
    ("This movie was wonderful, great acting.", "positive"),
    ("So many books, so little time.", "positive"),
    ("A boring, awful story.", "negative"),
]
ROWS = [{"review": r, "label": label, "tags": [label, "review"]} for r, label in REVIEWS]


def chat_row(review: str, label: str, role: str = "user") -> dict:
    return {"messages": [{"role": role, "content": review}, {"role": "assistant", "content": label}]}


def spec(dataset: str | dict, fmt: dict, **training: object) -> dict:
    return {
        "base_model": "tiny-llama",
        "dataset": dataset,
        "format": fmt,
        "quantization": None,
        "training": {"max_steps": 2, "batch_size": 2, "optimizer": "adamw_torch", **training},
    }


def parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def test_every_file_type_uploads_and_previews(stack: Stack) -> None:
    sheet = "review,label\n" + "".join(f'"{r}",{label}\n' for r, label in REVIEWS)
    files = {
        "reviews.jsonl": ("\n".join(json.dumps(r) for r in ROWS).encode(), "jsonl", ROWS),
        "reviews.json": (json.dumps(ROWS).encode(), "json", ROWS),
        "reviews.parquet": (parquet(ROWS), "parquet", ROWS),
        "reviews.csv": (sheet.encode(), "csv", [{"review": r, "label": label} for r, label in REVIEWS]),
        "reviews.tsv": (("review\tlabel\n" + "".join(f"{r}\t{label}\n" for r, label in REVIEWS)).encode(), "tsv", None),
    }
    for filename, (content, fmt, rows) in files.items():
        dataset = stack.upload(filename, content)
        assert dataset["format"] == fmt and dataset["rows"] == 4, dataset
        preview = stack.client.get(f"/datasets/{dataset['id']}/preview", params={"limit": 2})
        assert preview.status_code == 200 and preview.json()["rows"] == 4, preview.text
        if rows is not None:
            assert preview.json()["data"] == rows[:2], filename  # lists survive JSON and Parquet
    assert stack.client.get("/datasets/ds_000000000000000000000000/preview").status_code == 404
    assert stack.client.get(f"/datasets/{dataset['id']}/preview", params={"limit": 0}).status_code == 422


def test_bad_uploads_are_refused_and_leave_nothing_behind(stack: Stack) -> None:
    folder = Path(stack.local.env["FT_DATA_DIR"]) / "datasets"
    before = ({p.name for p in folder.iterdir()}, len(stack.client.get("/datasets").json()["data"]))
    cases = {
        ("ragged.csv", b"a,b\n1,2\n3\n"): "line 3",
        ("broken.jsonl", b'{"a": 1}\n{"a": 2}\n{"a": \n'): "line 3",
        ("empty.jsonl", b""): "empty",
        ("latin1.csv", "text\ncaf\u00e9\n".encode("latin-1")): "not UTF-8",
        ("utf16.jsonl", '{"text": "hi"}\n'.encode("utf-16")): "UTF-16",
    }
    for (filename, content), words in cases.items():
        response = stack.client.post("/datasets", files={"file": (filename, content)})
        assert response.status_code == 422 and words in response.json()["detail"], (filename, response.text)
    after = ({p.name for p in folder.iterdir()}, len(stack.client.get("/datasets").json()["data"]))
    assert after == before


def test_validate_shows_the_trained_part_lengths_and_steps(stack: Stack) -> None:
    dataset = stack.upload(
        "pairs.csv", ("review,label\n" + "".join(f'"{r}",{label}\n' for r, label in REVIEWS * 5)).encode()
    )
    fmt = {"type": "prompt_completion", "prompt": "{review} ->:", "completion": " {label}"}
    jobs_before = len(stack.client.get("/jobs", params={"limit": 500}).json()["data"])
    report = stack.client.post(
        "/jobs/validate", json=spec(dataset["id"], fmt, max_steps=None, epochs=2, batch_size=3, eval_fraction=0.1)
    )
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["ok"] and body["problems"] == []
    assert body["examples"][0]["text"] == "The food was terrible and the service slow. ->: negative</s>"
    assert body["examples"][0]["trained"] == " negative</s>"
    lengths = body["token_lengths"]
    assert set(lengths) == {"min", "p50", "p95", "max"} and 0 < lengths["min"] <= lengths["max"]
    assert (body["train_examples"], body["eval_examples"], body["truncated"]) == (18, 2, 0)
    assert body["total_steps"] == 2 * 6  # epochs x ceil(18 / 3)
    short = stack.client.post("/jobs/validate", json=spec(dataset["id"], fmt, max_seq_length=12)).json()
    assert short["truncated"] > 0 and short["total_steps"] == 2
    assert len(stack.client.get("/jobs", params={"limit": 500}).json()["data"]) == jobs_before  # nothing queued


def test_submit_refuses_what_validate_finds(stack: Stack) -> None:
    rows = [chat_row(r, label) for r, label in REVIEWS] + [chat_row("Who am I?", "A wizard.", role="wizard")]
    chats = stack.upload("chats.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    bad = spec(chats["id"], {"type": "chat"})
    report = stack.client.post("/jobs/validate", json=bad).json()
    assert not report["ok"] and report["problems"] == [
        {"row": 5, "message": "row 5: message 0 has role 'wizard'; use one of system, user, assistant, tool, developer"}
    ]
    refused = stack.client.post("/jobs", json=bad)
    assert refused.status_code == 422 and "row 5" in refused.json()["detail"] and "'wizard'" in refused.json()["detail"]
    assert refused.json()["problems"] == report["problems"]
    missing = stack.client.post(
        "/jobs", json=spec(chats["id"], {"type": "template", "template": "{messages} {answer}"})
    )
    assert missing.status_code == 422 and "'answer'" in missing.json()["detail"]
    pairs = stack.upload(
        "long.jsonl", b'{"prompt": "A journey of a thousand miles begins with", "completion": " a step"}\n'
    )
    cut = stack.client.post("/jobs", json=spec(pairs["id"], {"type": "prompt_completion"}, max_seq_length=8))
    assert cut.status_code == 422 and "training.max_seq_length" in cut.json()["detail"]
    hub = stack.client.post("/jobs/validate", json=spec({"hub": "nobody/not-cached"}, {"type": "chat"})).json()
    assert hub["ok"] and any("cannot be reached" in w for w in hub["warnings"])  # the worker will say more
    url = stack.client.post("/jobs/validate", json=spec({"hub": "https://evil.example/x"}, {"type": "chat"}))
    assert url.status_code == 422 and "no URLs" in url.json()["detail"]


@ONE_DATABASE
def test_a_chat_job_trains_with_eval_and_keeps_the_best_adapter(stack: Stack) -> None:
    chats = stack.upload(
        "train-chats.jsonl", "\n".join(json.dumps(chat_row(r, label)) for r, label in REVIEWS * 2).encode()
    )
    body = spec(chats["id"], {"type": "chat"}, max_steps=4, eval_fraction=0.25, eval_every_steps=2, load_best=True)
    checked = stack.client.post("/jobs/validate", json=body).json()
    assert checked["ok"] and checked["examples"][0]["trained"] == "negative</s>"
    job = stack.client.post("/jobs", json=body)
    assert job.status_code == 201, job.text
    done = stack.wait(job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["total_steps"] == checked["total_steps"] == 4
    evals = stack.client.get(f"/jobs/{done['id']}/metrics").json()["eval"]
    assert [p["step"] for p in evals] == [2, 4]
    assert all(0 <= p["mean_token_accuracy"] <= 1 and p["eval_loss"] > 0 for p in evals)
