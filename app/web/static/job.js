// #/jobs/ID: live curves (loss and eval loss, learning rate, tokens/s), progress, spec, error, cancel, downloads.
// The curve so far comes from GET /metrics; GET /events then continues from the X-Last-Event-ID that
// response carried, so no point is missed or drawn twice; a dropped stream resumes with Last-Event-ID.

import { LineChart, formatNumber } from "./chart.js";
import { TERMINAL, badge, bytes, errorBox, eta, h, progressBar, when } from "./dom.js";

const COLORS = { loss: "#2563eb", eval: "#ea580c", lr: "#7c3aed", tps: "#059669", margin: "#db2777", accuracy: "#0891b2" };
const MARGIN = "rewards/margins";
const ACCURACY = "rewards/accuracies";

function stat(label, id) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value", id }, "–"));
}

function chartFigure(id, title, legend) {
  const canvas = h("canvas", { id, class: "chart", dataset: { points: "0" } });
  const keys = legend.map(([name, color]) => h("span", { class: "legend" }, h("i", { style: `background:${color}` }), name));
  return { canvas, figure: h("figure", { class: "card chart-card" }, h("figcaption", {}, title, ...keys), canvas) };
}

export function jobView(view, api, jobId, onUnauthorized) {
  let job = null;
  let lastEventId = null;
  let lastStep = 0;
  const controller = new AbortController();
  const stop = { disposed: false };

  const loss = chartFigure("loss-chart", "Loss", [["train", COLORS.loss], ["eval", COLORS.eval]]);
  const lr = chartFigure("lr-chart", "Learning rate", [["lr", COLORS.lr]]);
  const tps = chartFigure("tps-chart", "Tokens / s", [["tokens/s", COLORS.tps]]);
  // Preference jobs (DPO, KTO, ORPO, SimPO): the reward margin while training, the reward accuracy at each eval.
  const rewards = chartFigure("reward-chart", "Rewards", [["margin (train)", COLORS.margin], ["accuracy (eval)", COLORS.accuracy]]);
  rewards.figure.hidden = true;
  const charts = {
    loss: new LineChart(loss.canvas, { series: [{ name: "train", color: COLORS.loss }, { name: "eval", color: COLORS.eval, dots: true }] }),
    lr: new LineChart(lr.canvas, { series: [{ name: "lr", color: COLORS.lr }], yFormat: (v) => v.toExponential(2) }),
    tps: new LineChart(tps.canvas, { series: [{ name: "tokens/s", color: COLORS.tps }] }),
    rewards: new LineChart(rewards.canvas, {
      series: [{ name: "margin", color: COLORS.margin }, { name: "accuracy", color: COLORS.accuracy, dots: true }],
    }),
  };
  function addRewards(train, evals) {
    const margins = train.filter((p) => p[MARGIN] != null).map((p) => ({ x: p.step, y: p[MARGIN] }));
    const accuracies = evals.filter((p) => p[ACCURACY] != null).map((p) => ({ x: p.step, y: p[ACCURACY] }));
    if (!margins.length && !accuracies.length) return;
    rewards.figure.hidden = false;
    if (margins.length) charts.rewards.addPoints(0, margins);
    if (accuracies.length) charts.rewards.addPoints(1, accuracies);
  }

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

  function logEvent(text, kind = "info") {
    eventLog.querySelector("li.muted")?.remove();
    eventLog.prepend(h("li", { class: `log-${kind}` }, h("time", {}, new Date().toLocaleTimeString()), " ", text));
    while (eventLog.children.length > 200) eventLog.lastChild.remove();
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
    charts.loss.addPoints(0, fresh.map((p) => ({ x: p.step, y: p.loss })));
    charts.lr.addPoints(0, fresh.map((p) => ({ x: p.step, y: p.learning_rate })));
    charts.tps.addPoints(0, fresh.map((p) => ({ x: p.step, y: p.tokens_per_second })));
    addRewards(fresh, []);
    const latest = fresh[fresh.length - 1];
    document.getElementById("stat-tps").textContent = formatNumber(latest.tokens_per_second);
    if (latest.peak_memory_mb) document.getElementById("stat-tps").textContent += ` · ${formatNumber(latest.peak_memory_mb)} MB peak`;
  }

  async function refreshJob() {
    job = await api.get(`/jobs/${jobId}`);
    renderJob();
  }

  async function refreshArtifacts() {
    const page = await api.get(`/jobs/${jobId}/artifacts`);
    artifactList.replaceChildren(
      ...(page.data.length ? [] : [h("li", { class: "muted" }, "Nothing to download yet.")]),
      ...page.data.map((a) =>
        h("li", {},
          h("button", { class: "link", onclick: () => api.download(a.download_url, `${jobId}-${a.name}.tar.gz`).catch((e) => logEvent(e.message, "warning")) }, a.name),
          h("span", { class: "muted small" }, ` ${a.kind} · ${bytes(a.size_bytes)}${a.step ? ` · step ${a.step}` : ""}`)),
      ),
    );
  }

  function onEvent(event) {
    const data = event.data;
    if (event.event === "metric") {
      addTrain([data]);
      Object.assign(job.progress, { step: data.step, total_steps: data.total_steps ?? job.progress.total_steps, eta_seconds: data.eta_seconds });
      Object.assign(job.latest, { loss: data.loss, learning_rate: data.learning_rate });
      renderJob();
    } else if (event.event === "eval") {
      charts.loss.addPoints(1, [{ x: data.step, y: data.eval_loss }]);
      addRewards([], [data]);
      logEvent(`eval at step ${data.step}: eval_loss ${formatNumber(data.eval_loss)}`);
    } else if (event.event === "status") {
      logEvent(`status ${data.status}${data.reason ? ` (${data.reason})` : ""}${data.error ? `: ${data.error.message}` : ""}`, data.error ? "error" : "info");
      job.status = data.status;
      renderJob();
      refreshJob().catch(() => {});
      if (TERMINAL.has(data.status)) refreshArtifacts().catch(() => {});
    } else if (event.event === "checkpoint") {
      logEvent(`checkpoint saved at step ${data.step}`);
      refreshArtifacts().catch(() => {});
    } else if (event.event === "warning") {
      logEvent(data.message, "warning");
    }
  }

  async function follow() {
    while (!stop.disposed && job && !TERMINAL.has(job.status)) {
      try {
        for await (const event of api.events(jobId, lastEventId, controller.signal)) {
          if (event.id) lastEventId = event.id;
          onEvent(event);
        }
      } catch (err) {
        if (stop.disposed) return;
        onUnauthorized(err);
      }
      if (!stop.disposed && !TERMINAL.has(job.status)) await new Promise((r) => setTimeout(r, 2000));
      await refreshJob().catch(() => {});
    }
    liveBadge.hidden = true;
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
      h("div", { class: "charts" }, loss.figure, lr.figure, tps.figure, rewards.figure),
      h("div", { class: "columns" },
        h("div", { class: "card" }, h("h2", {}, "Artifacts"), artifactList),
        h("div", { class: "card" }, h("h2", {}, "Events"), eventLog)),
      h("details", { class: "card", open: true }, h("summary", {}, "Spec"), specBlock)),
  );

  (async () => {
    try {
      // The curve first, then the record: the events stream resumes after the curve's last event, so a status
      // change between the two requests is in the record (the worker commits before it publishes) and never lost.
      const curve = await api.request("GET", `/jobs/${jobId}/metrics?max_points=2000`);
      lastEventId = curve.headers.get("X-Last-Event-ID");
      await refreshJob();
      addTrain(curve.body.train);
      charts.loss.setPoints(1, curve.body.eval.map((p) => ({ x: p.step, y: p.eval_loss })));
      addRewards([], curve.body.eval);
      await refreshArtifacts();
      await follow();
    } catch (err) {
      onUnauthorized(err);
      message.replaceChildren(errorBox(err));
    }
  })();

  return () => {
    stop.disposed = true;
    controller.abort();
    Object.values(charts).forEach((c) => c.dispose());
  };
}
