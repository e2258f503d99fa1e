"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright): sign in, upload a dataset,
submit a job through the form, watch its loss curve draw and grow, cancel it; screenshots are saved. A finished
classification job's page: uPlot charts that zoom and switch to a log scale, accuracy and macro-F1 curves, the
event history, and a return visit answered by 304s."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from ftctl.sentiment_samples import training_rows
from tests.integration.conftest import ONE_DATABASE, TERMINAL, Stack
from tests.integration.test_end_to_end import quotes_jsonl

pytestmark = ONE_DATABASE

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`apt-get install chromium`); Playwright downloads nothing
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIVE_TIMEOUT_MS = 240_000  # model loading and training on a busy 2-core machine


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "the dashboard test needs Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Whatever the page's Content-Security-Policy refused (an inline style, a script from elsewhere) is an error too.
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def chart_points(page: Page, chart: str = "#loss-chart") -> int:
    return int(page.locator(chart).get_attribute("data-points") or 0)


def wait_for_points(page: Page, chart: str, more_than: int, timeout_ms: float = LIVE_TIMEOUT_MS) -> None:
    """Poll from here: page.wait_for_function evaluates its predicate with eval, which the page's CSP refuses."""
    deadline = time.monotonic() + timeout_ms / 1000
    while chart_points(page, chart) <= more_than:
        assert time.monotonic() < deadline, f"{chart} still has {chart_points(page, chart)} points"
        page.wait_for_timeout(250)


def x_range(page: Page, chart: str) -> tuple[float, float]:
    """The x range the uPlot chart shows now (the chart writes its scale into data-x-min / data-x-max)."""
    box = page.locator(chart)
    return float(box.get_attribute("data-x-min") or "nan"), float(box.get_attribute("data-x-max") or "nan")


def drag_across(page: Page, chart: str, start: float, end: float) -> None:
    """Press on the plot area at `start` of its width, drag to `end`, let go: how a person zooms a uPlot."""
    area = page.locator(f"{chart} .u-over").bounding_box()
    assert area, f"{chart} has no plot area"
    y = area["y"] + area["height"] / 2
    page.mouse.move(area["x"] + area["width"] * start, y)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * end, y, steps=8)
    page.mouse.up()


def sign_in(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.local.base_url}/")
    page.fill("#api-key", "ft_not_a_key_at_all")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-form .error")).to_contain_text("not accepted")
    page.fill("#api-key", stack.key)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#jobs-table")).to_be_visible()


def submit_through_the_form(page: Page, tmp_path: Path) -> str:
    page.click("nav a[href='#/new']")
    data_file = tmp_path / "quotes.jsonl"
    # One row of its own, so the upload is new (identical files are deduplicated to the first upload).
    data_file.write_bytes(quotes_jsonl() + b'\n{"quote": "Seen from a browser.", "tags": ["dashboard"]}\n')
    page.set_input_files("#dataset-file", str(data_file))
    page.fill("#dataset-name", "quotes from the browser")
    page.click("#upload-button")
    expect(page.locator("#job-form .ok")).to_contain_text("65 rows")
    expect(page.locator("#dataset option:checked")).to_contain_text("quotes from the browser")
    expect(page.locator("#dataset-info")).to_contain_text("quote, tags")
    page.fill("#name", "browser-job")
    page.fill("#base_model", "tiny-llama")
    page.fill("#template", "{quote} ->: {tags}")
    page.fill("#max_steps", "300")  # far more than the test lets it run: the cancel always lands mid-run
    page.fill("#learning_rate", "0.003")
    page.fill("#grad_accum", "2")
    expect(page.locator("#spec-preview")).to_contain_text('"max_steps": 300')
    page.click("#submit-job")
    page.wait_for_url("**/#/jobs/job_*")
    return page.url.rsplit("/", 1)[-1]


def hold_the_first_curve_until_the_job_runs(page: Page, stack: Stack) -> None:
    """The job page reads the curve, then the record, then follows the events from the curve's last event. Holding
    the first curve request until the worker has claimed the job puts the `running` status event before the point
    the stream resumes from, every time: the page must still show `running` (it showed `queued` for the whole run
    when it read the record first)."""

    def hold(route: Route) -> None:
        job_id = route.request.url.split("/jobs/", 1)[1].split("/", 1)[0]
        try:
            stack.wait(job_id, LIVE_TIMEOUT_MS / 1000, until={"running", "cancelling", *TERMINAL})
        finally:
            route.continue_()  # the page goes on either way; a job that never ran fails the checks below

    page.route("**/jobs/*/metrics*", hold, times=1)


def test_sign_in_submit_watch_the_curve_grow_and_cancel(stack: Stack, page: Page, tmp_path: Path) -> None:
    sign_in(page, stack)
    hold_the_first_curve_until_the_job_runs(page, stack)
    job_id = submit_through_the_form(page, tmp_path)
    expect(page.locator("#job-title")).to_have_text("browser-job", timeout=LIVE_TIMEOUT_MS)  # once it runs
    expect(page.locator("#job-spec")).to_contain_text('"template": "{quote} ->: {tags}"')

    wait_for_points(page, "#loss-chart", 0)  # the curve draws ...
    wait_for_points(page, "#loss-chart", chart_points(page))  # ... and grows, live
    expect(page.locator("#job-status .badge")).to_have_text("running")
    assert chart_points(page, "#lr-chart") >= 1 and chart_points(page, "#tps-chart") >= 0
    expect(page.locator("#job-progress .progress-text")).to_contain_text("/ 300")
    running_shot = tmp_path / "dashboard-running.png"
    page.screenshot(path=str(running_shot), full_page=True)

    page.click("#cancel-job")
    expect(page.locator("#job-status .badge")).to_have_text("cancelled", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#cancel-job")).to_be_hidden()
    expect(page.locator("#event-log")).to_contain_text("status cancelled")
    job = stack.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["progress"]["step"] < 300
    assert chart_points(page) == len(stack.client.get(f"/jobs/{job_id}/metrics").json()["train"])
    cancelled_shot = tmp_path / "dashboard-cancelled.png"
    page.screenshot(path=str(cancelled_shot), full_page=True)

    page.click("nav a[href='#/']")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row.locator(".badge")).to_have_text("cancelled")
    list_shot = tmp_path / "dashboard-jobs.png"
    page.screenshot(path=str(list_shot), full_page=True)
    print(f"\nscreenshots: {running_shot} {cancelled_shot} {list_shot}")


def test_the_page_is_served_without_a_key_but_data_needs_one(stack: Stack) -> None:
    with stack.anonymous() as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="/ui/app.js"' in page.text and "http" not in page.text.split("<body>")[0], "no CDN"
        assert anonymous.get("/ui/chart.js").status_code == 200
        assert anonymous.get("/ui/vendor/uplot/uPlot.esm.js").status_code == 200  # vendored: no CDN, works offline
        assert "MIT License" in anonymous.get("/ui/vendor/uplot/LICENSE").text
        assert anonymous.get("/jobs").status_code == 401


def test_a_preference_job_shows_its_reward_curves(stack: Stack, page: Page) -> None:
    pairs = [
        {"prompt": f"Review: {text} Sentiment:", "chosen": f" {good}", "rejected": f" {bad}"}
        for text, good, bad in [("Wonderful.", "positive", "negative"), ("Awful.", "negative", "positive")] * 4
    ]
    dataset = stack.upload("pairs.jsonl", "\n".join(json.dumps(p) for p in pairs).encode())
    spec = {
        "base_model": "tiny-llama",
        "dataset": dataset["id"],
        "format": {"type": "preference"},
        "method": {"type": "dpo"},
        "quantization": None,
        "training": {
            "max_steps": 4,
            "batch_size": 2,
            "eval_fraction": 0.25,
            "eval_every_steps": 2,
            "optimizer": "adamw_torch",
        },
    }
    created = stack.client.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    assert stack.wait(created.json()["id"])["status"] == "succeeded"
    sign_in(page, stack)
    page.goto(f"{stack.local.base_url}/#/jobs/{created.json()['id']}")
    expect(page.locator("#reward-chart")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#reward-chart .uplot")).to_have_count(1)
    wait_for_points(page, "#reward-chart", 3, timeout_ms=30_000)
    expect(page.locator("#loss-chart")).to_be_visible()
    expect(page.locator("#classification-chart")).to_be_hidden()  # no accuracy or F1 in a DPO job's evals


def test_a_finished_classification_job_zooms_scales_scores_and_lists_its_history(stack: Stack, page: Page) -> None:
    dataset = stack.upload("sentiment.jsonl", "\n".join(json.dumps(r) for r in training_rows()).encode())
    spec = {
        "task": "classification",
        "base_model": "tiny-llama",
        "dataset": dataset["id"],
        "format": {"type": "classification", "text": "sentence", "label": "label"},
        "quantization": None,
        "training": {
            "max_steps": 6,
            "batch_size": 8,
            "eval_fraction": 0.2,
            "eval_every_steps": 2,
            "optimizer": "adamw_torch",
        },
    }
    created = stack.client.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert stack.wait(job_id)["status"] == "succeeded"
    curve = stack.client.get(f"/jobs/{job_id}/metrics").json()
    assert len(curve["eval"]) >= 2 and all("accuracy" in p and "f1" in p for p in curve["eval"])

    sign_in(page, stack)
    page.goto(f"{stack.local.base_url}/#/jobs/{job_id}")
    expect(page.locator("#loss-chart .uplot")).to_have_count(1)
    wait_for_points(page, "#loss-chart", len(curve["train"]) - 1, timeout_ms=30_000)
    scores = page.locator("#classification-chart")
    expect(scores).to_be_visible()
    expect(scores).to_have_attribute("data-points", str(len(curve["eval"])))
    expect(scores.locator(".u-legend")).to_contain_text("accuracy")
    expect(scores.locator(".u-legend")).to_contain_text("macro-F1")

    # The event history of a finished job, read after the fact (it was empty before: only live events showed).
    log = page.locator("#event-log")
    expect(log).to_contain_text("status succeeded")
    expect(log).to_contain_text("status running")
    expect(log).to_contain_text(f"eval at step {curve['eval'][-1]['step']}")
    expect(log).to_contain_text("accuracy")

    # The legend reads the values under the cursor; drag to zoom on x, double-click to zoom back out.
    step_in_legend = page.locator("#loss-chart .u-legend .u-series").first.locator(".u-value")
    assert not any(c.isdigit() for c in step_in_legend.inner_text())
    area = page.locator("#loss-chart .u-over").bounding_box()
    assert area
    page.mouse.move(area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)
    expect(step_in_legend).to_have_text(re.compile(r"^\d+$"))
    full = x_range(page, "#loss-chart")
    drag_across(page, "#loss-chart", 0.3, 0.7)
    expect(page.locator("#loss-chart")).to_have_attribute("data-zoomed", "true")
    zoomed = x_range(page, "#loss-chart")
    assert full[0] < zoomed[0] < zoomed[1] < full[1], (full, zoomed)
    page.mouse.dblclick(area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)
    expect(page.locator("#loss-chart")).to_have_attribute("data-zoomed", "false")
    assert x_range(page, "#loss-chart") == full

    expect(page.locator("#loss-chart")).to_have_attribute("data-y-scale", "linear")
    page.check("#loss-log")
    expect(page.locator("#loss-chart")).to_have_attribute("data-y-scale", "log")
    expect(page.locator("#loss-chart .uplot")).to_have_count(1)  # redrawn in place, not a second chart
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", str(len(curve["train"])))
    page.uncheck("#loss-log")
    expect(page.locator("#loss-chart")).to_have_attribute("data-y-scale", "linear")

    # A return visit asks with the ETags it holds: the record and the curve come back 304, the page still draws.
    answers: list[tuple[str, int, str | None]] = []
    page.on("response", lambda r: answers.append((r.url, r.status, r.request.headers.get("if-none-match"))))
    page.click("nav a[href='#/']")
    expect(page.locator(f"tr[data-job-id='{job_id}']")).to_be_visible()
    page.goto(f"{stack.local.base_url}/#/jobs/{job_id}")
    wait_for_points(page, "#loss-chart", len(curve["train"]) - 1, timeout_ms=30_000)
    expect(page.locator("#job-status .badge")).to_have_text("succeeded")
    revalidated = {url.split(stack.local.base_url, 1)[1] for url, status, tag in answers if status == 304 and tag}
    assert {f"/jobs/{job_id}", f"/jobs/{job_id}/metrics?max_points=2000"} <= revalidated, answers
