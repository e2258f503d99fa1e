// #/jobs/ID: live curves (job-charts.js), progress, spec, error, cancel, downloads and the job's events.
// The curve so far comes from GET /metrics; GET /events then continues from the X-Last-Event-ID that
// response carried, so no point is missed or drawn twice; a dropped stream resumes with Last-Event-ID.
// A finished job's Events panel lists its history (GET /events?follow=false). While the job runs, the record
// and the artifacts are polled with If-None-Match: a 304 costs the server a hash and the page nothing.

import { formatNumber } from "./chart.js";
import { TERMINAL, badge, bytes, errorBox, eta, h, progressBar, when } from "./dom.js";
import { JobCharts } from "./job-charts.js";

const POLL_MS = 5000;
const RETRY_MS = 2000;
const MAX_LOG = 200;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function stat(label, id) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value", id }, "–"));
}

// A stream id is `<milliseconds>-<sequence>`: when the event happened, for events read after the fact.
function eventTime(id) {
  const ms = id ? Number(id.split("-")[0]) : NaN;
  return Number.isFinite(ms) ? new Date(ms) : null;
}

// One line of the Events panel for an event, or null for those the charts show (metric points).
function describe(event) {
  const data = event.data;
  if (event.event === "status") {
    const text = `status ${data.status}${data.reason ? ` (${data.reason})` : ""}${data.error ? `: ${data.error.message}` : ""}`;
    return { text, kind: data.error ? "error" : "info" };
  }
  if (event.event === "eval") {
    const scores = [["eval_loss", data.eval_loss], ["accuracy", data.accuracy], ["macro-F1", data.f1]]
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([name, v]) => `${name} ${formatNumber(v)}`);
    return { text: `eval at step ${data.step}: ${scores.join(", ")}`, kind: "info" };
  }
  if (event.event === "checkpoint") return { text: `checkpoint saved at step ${data.step}`, kind: "info" };
  if (event.event === "warning") return { text: data.message, kind: "warning" };
  return null;
}

export function jobView(view, api, jobId, onUnauthorized) {
  let job = null;
  let lastEventId = null;
  let lastStep = 0;
  let streamDown = false; // no live stream (refused or dropped): the poll reads the curve instead
  const controller = new AbortController();
  const stop = { disposed: false };
  const charts = new JobCharts();
  const CURVE = `/jobs/${jobId}/metrics?max_points=2000`;

  const title = h("h1", { id: "job-title" }, jobId);
  const statusSlot = h("span", { id: "job-status" });
  const cancelButton = h("button", { id: "cancel-job", class: "danger", hidden: true }, "Cancel job");
  const progressSlot = h("div", { id: "job-progress", class: "wide-progress" });
  const errorSlot = h("div", { id: "job-error" });
  const message = h("div");
  const artifactList = h("ul", { id: "artifacts", class: "artifacts" });
  const eventLog = h("ol", { id: "event-log", class: "log" }, h("li", { class: "muted" }, "Status changes, evals, checkpoints and warnings show here as they happen."));
  const liveBadge = h("span", { class: "live", title: "following the job's events" }, "live");
  const specBlock = h("pre", { id: "job-spec", class: "spec" });

  function logEvent(text, kind = "info", at = new Date()) {
    eventLog.querySelector("li.muted")?.remove();
    const time = at ? h("time", { datetime: at.toISOString() }, at.toLocaleTimeString()) : null;
    eventLog.prepend(h("li", { class: `log-${kind}` }, time, " ", text));
    while (eventLog.children.length > MAX_LOG) eventLog.lastChild.remove();
  }

  function renderJob() {
    title.textContent = job.name || job.id;
    statusSlot.replaceChildren(badge(job.status));
    cancelButton.hidden = !["queued", "running"].includes(job.status);
    const { step, total_steps: total, eta_seconds: seconds } = job.progress;
    progressSlot.replaceChildren(progressBar(step, total));
    const set = (id, text) => (document.getElementById(id).textContent = text);
    set("stat-eta", job.status === "running" ? eta(seconds) : "–");
    set("stat-loss", formatNumber(job.latest.loss));
    set("stat-eval", formatNumber(job.latest.eval_loss));
    set("stat-lr", job.latest.learning_rate === null ? "–" : job.latest.learning_rate.toExponential(2));
    const params = job.trainable_parameters ? `${formatNumber(job.trainable_parameters)} / ${formatNumber(job.total_parameters)}` : "–";
    set("stat-params", params);
    const started = job.started_at ? new Date(job.started_at.endsWith("Z") ? job.started_at : `${job.started_at}Z`) : null;
    const ended = job.finished_at ? new Date(job.finished_at.endsWith("Z") ? job.finished_at : `${job.finished_at}Z`) : new Date();
    set("stat-duration", started ? eta((ended - started) / 1000) : "–");
    document.getElementById("stat-duration").title = `started ${when(job.started_at)}, finished ${when(job.finished_at)}`;
    liveBadge.hidden = TERMINAL.has(job.status);
    errorSlot.replaceChildren(job.error ? errorBox(new Error(`${job.error.type}: ${job.error.message}`)) : "");
    specBlock.textContent = JSON.stringify(job.spec, null, 2);
  }

  function addTrain(points) {
    const fresh = points.filter((p) => p.step > lastStep);
    if (!fresh.length) return;
    lastStep = fresh[fresh.length - 1].step;
    charts.addTrain(fresh);
    const latest = fresh[fresh.length - 1];
    document.getElementById("stat-tps").textContent = formatNumber(latest.tokens_per_second);
    if (latest.peak_memory_mb) document.getElementById("stat-tps").textContent += ` · ${formatNumber(latest.peak_memory_mb)} MB peak`;
  }

  function showCurve(curve) {
    charts.clear();
    lastStep = 0;
    addTrain(curve.train);
    charts.addEval(curve.eval);
  }

  async function refreshJob() {
    const fresh = await api.getFresh(`/jobs/${jobId}`);
    if (stop.disposed || (!fresh.changed && job)) return; // the page may have been left while this was asked
    job = fresh.body;
    renderJob();
  }

  async function refreshCurve() {
    const fresh = await api.getFresh(CURVE);
    if (fresh.changed && !stop.disposed) showCurve(fresh.body);
  }

  async function refreshArtifacts() {
    const fresh = await api.getFresh(`/jobs/${jobId}/artifacts`);
    if (stop.disposed || (!fresh.changed && artifactList.children.length)) return;
    const artifacts = fresh.body.data;
    artifactList.replaceChildren(
      ...(artifacts.length ? [] : [h("li", { class: "muted" }, "Nothing to download yet.")]),
      ...artifacts.map((a) =>
        h("li", {},
          h("button", { class: "link", onclick: () => api.download(a.download_url, `${jobId}-${a.name}.tar.gz`).catch((e) => logEvent(e.message, "warning")) }, a.name),
          h("span", { class: "muted small" }, ` ${a.kind} · ${bytes(a.size_bytes)}${a.step ? ` · step ${a.step}` : ""}`)),
      ),
    );
  }

  function onEvent(event) {
    const data = event.data;
    const line = describe(event);
    if (line) logEvent(line.text, line.kind);
    if (event.event === "metric") {
      addTrain([data]);
      Object.assign(job.progress, { step: data.step, total_steps: data.total_steps ?? job.progress.total_steps, eta_seconds: data.eta_seconds });
      Object.assign(job.latest, { loss: data.loss, learning_rate: data.learning_rate });
      renderJob();
    } else if (event.event === "eval") {
      charts.addEval([data]);
    } else if (event.event === "status") {
      job.status = data.status;
      renderJob();
      refreshJob().catch(() => {});
      if (TERMINAL.has(data.status)) refreshArtifacts().catch(() => {});
    } else if (event.event === "checkpoint") {
      refreshArtifacts().catch(() => {});
    }
  }

  async function follow() {
    while (!stop.disposed && job && !TERMINAL.has(job.status)) {
      try {
        for await (const event of api.events(jobId, lastEventId, controller.signal)) {
          streamDown = false;
          if (event.id) lastEventId = event.id;
          onEvent(event);
        }
      } catch (err) {
        if (stop.disposed) return;
        streamDown = true; // e.g. 429 at the tenant's FT_MAX_EVENT_STREAMS: the poll keeps the curve current
        onUnauthorized(err);
      }
      if (!stop.disposed && !TERMINAL.has(job.status)) await sleep(RETRY_MS);
      await refreshJob().catch(() => {});
    }
    liveBadge.hidden = true;
  }

  // What the stream does not say (queue position, a checkpoint's size, the curve while no stream is open).
  async function poll() {
    while (!stop.disposed && job && !TERMINAL.has(job.status)) {
      await sleep(POLL_MS);
      if (stop.disposed) return;
      try {
        await refreshJob();
        await refreshArtifacts();
        if (streamDown) await refreshCurve();
      } catch (err) {
        onUnauthorized(err);
      }
    }
  }

  async function showHistory() {
    eventLog.replaceChildren(h("li", { class: "muted" }, "Reading the job's events…"));
    let lines = 0;
    for await (const event of api.events(jobId, null, controller.signal, { follow: false })) {
      const line = describe(event);
      if (line) logEvent(line.text, line.kind, eventTime(event.id));
      lines += line ? 1 : 0;
    }
    if (!lines) eventLog.replaceChildren(h("li", { class: "muted" }, "No events are kept for this job."));
    eventLog.dataset.history = String(lines);
  }

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    try {
      job = await api.post(`/jobs/${jobId}/cancel`);
      logEvent(`cancel requested: ${job.status}`);
      renderJob();
    } catch (err) {
      message.replaceChildren(errorBox(err));
    } finally {
      cancelButton.disabled = false;
    }
  });

  view.replaceChildren(
    h("section", { class: "job-page" },
      h("div", { class: "toolbar" }, h("a", { href: "#/" }, "← Jobs"), title, statusSlot, liveBadge, cancelButton),
      h("div", { class: "muted small" }, jobId),
      message, errorSlot, progressSlot,
      h("div", { class: "stats" }, stat("ETA", "stat-eta"), stat("Loss", "stat-loss"), stat("Eval loss", "stat-eval"), stat("Learning rate", "stat-lr"),
        stat("Tokens / s", "stat-tps"), stat("Trainable / total params", "stat-params"), stat("Duration", "stat-duration")),
      charts.element,
      h("div", { class: "columns" },
        h("div", { class: "card" }, h("h2", {}, "Artifacts"), artifactList),
        h("div", { class: "card" }, h("h2", {}, "Events"), eventLog)),
      h("details", { class: "card", open: true }, h("summary", {}, "Spec"), specBlock)),
  );

  (async () => {
    try {
      // The curve first, then the record: the events stream resumes after the curve's last event, so a status
      // change between the two requests is in the record (the worker commits before it publishes) and never lost.
      // On a return visit the curve may be a 304: the one kept from then, still current.
      const curve = await api.getFresh(CURVE);
      lastEventId = curve.headers.get("X-Last-Event-ID");
      await refreshJob();
      showCurve(curve.body);
      await refreshArtifacts();
      if (TERMINAL.has(job.status)) await showHistory();
      else await Promise.all([follow(), poll()]);
    } catch (err) {
      if (stop.disposed) return;
      onUnauthorized(err);
      message.replaceChildren(errorBox(err));
    }
  })();

  return () => {
    stop.disposed = true;
    controller.abort();
    charts.dispose();
  };
}
