"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright): sign in, upload a dataset,
submit a job through the form, watch its loss curve draw and grow, cancel it; screenshots are saved."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

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
    wait_for_points(page, "#reward-chart", 3, timeout_ms=30_000)
    expect(page.locator("#loss-chart")).to_be_visible()
