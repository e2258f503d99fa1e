// The job page's curves: loss (train and eval, with a log-scale toggle), learning rate, tokens/s, and the curves
// only some jobs have: accuracy and macro-F1 of classification jobs, the rewards of preference jobs.
// A figure whose metrics a job never reports stays hidden.

import { LineChart } from "./chart.js";
import { h } from "./dom.js";

const COLORS = {
  loss: "#2563eb", eval: "#ea580c", lr: "#7c3aed", tps: "#059669",
  margin: "#db2777", rewardAccuracy: "#0891b2", accuracy: "#0d9488", f1: "#9333ea",
};
const MARGIN = "rewards/margins";
const REWARD_ACCURACY = "rewards/accuracies";

function figure(id, title, { height = 150, hidden = false, extra = null } = {}) {
  const box = h("div", { id, class: "chart", dataset: { points: "0" } });
  const el = h("figure", { class: "card chart-card", hidden }, h("figcaption", {}, title, extra), box);
  return { box, el };
}

const along = (points, key) => points.filter((p) => p[key] != null).map((p) => ({ x: p.step, y: p[key] }));

export class JobCharts {
  constructor() {
    this.logToggle = h("input", { type: "checkbox", id: "loss-log" });
    const logLabel = h("label", { class: "toggle small" }, this.logToggle, " log scale");
    const loss = figure("loss-chart", "Loss", { extra: logLabel });
    const lr = figure("lr-chart", "Learning rate");
    const tps = figure("tps-chart", "Tokens / s");
    const classification = figure("classification-chart", "Accuracy and macro-F1 (eval)", { hidden: true });
    // Preference jobs (DPO, KTO, ORPO, SimPO): the reward margin while training, the reward accuracy at each eval.
    const rewards = figure("reward-chart", "Rewards", { hidden: true });
    this.figures = { classification: classification.el, rewards: rewards.el };
    this.element = h("div", { class: "charts" }, loss.el, lr.el, tps.el, classification.el, rewards.el);
    const exp = (v) => v.toExponential(2);
    this.loss = new LineChart(loss.box, {
      height: 370,
      series: [{ name: "train", color: COLORS.loss }, { name: "eval", color: COLORS.eval, dots: true }],
    });
    this.lr = new LineChart(lr.box, { series: [{ name: "lr", color: COLORS.lr }], yFormat: exp });
    this.tps = new LineChart(tps.box, { series: [{ name: "tokens/s", color: COLORS.tps }] });
    this.classification = new LineChart(classification.box, {
      series: [{ name: "accuracy", color: COLORS.accuracy, dots: true }, { name: "macro-F1", color: COLORS.f1, dots: true }],
    });
    this.rewards = new LineChart(rewards.box, {
      series: [{ name: "margin", color: COLORS.margin }, { name: "accuracy", color: COLORS.rewardAccuracy, dots: true }],
    });
    this.logToggle.addEventListener("change", () => this.loss.setLog(this.logToggle.checked));
  }

  all() {
    return [this.loss, this.lr, this.tps, this.classification, this.rewards];
  }

  // Points of the training split, in step order, newer than any drawn (the caller filters repeats).
  addTrain(points) {
    this.loss.addPoints(0, along(points, "loss"));
    this.lr.addPoints(0, along(points, "learning_rate"));
    this.tps.addPoints(0, along(points, "tokens_per_second"));
    this.show("rewards", this.rewards, 0, along(points, MARGIN));
  }

  addEval(points) {
    this.loss.addPoints(1, along(points, "eval_loss"));
    this.show("classification", this.classification, 0, along(points, "accuracy"));
    this.show("classification", this.classification, 1, along(points, "f1"));
    this.show("rewards", this.rewards, 1, along(points, REWARD_ACCURACY));
  }

  // Before drawing a whole curve anew (a fresh GET /metrics).
  clear() {
    for (const chart of this.all()) chart.series.forEach((s, i) => chart.setPoints(i, []));
  }

  show(name, chart, index, points) {
    if (!points.length) return;
    this.figures[name].hidden = false;
    chart.addPoints(index, points);
  }

  dispose() {
    this.all().forEach((c) => c.dispose());
  }
}
