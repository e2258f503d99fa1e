// Line charts over training steps, drawn by uPlot (vendored in ./vendor/uplot, MIT): drag to zoom on x,
// double-click to zoom back out, a legend that reads the values under the cursor, and a log scale on request.
// The chart's element carries its state for tests and scripts: data-points (points in the first series),
// data-x-min / data-x-max (the x range shown) and data-y-scale (linear or log).

import uPlot from "./vendor/uplot/uPlot.esm.js";

export function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  return Number(v.toPrecision(4)).toString();
}

// uPlot wants one x array shared by every series: the union of their steps, a null where a series has no point
// (eval points fall between train points), drawn across by spanGaps.
function align(series) {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const column = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const values = new Array(xs.length).fill(null);
    for (const p of s.points) values[column.get(p.x)] = p.y;
    return values;
  });
  return [xs, ...ys];
}

const AXIS = { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#eef0f3" } };
const STEP_INCREMENTS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6].map((p) => m * p)).sort((a, b) => a - b);
const finite = (p) => p.y !== null && p.y !== undefined && Number.isFinite(p.y);

export class LineChart {
  // series: [{name, color, dots}]; height in CSS pixels of the plot (the legend goes below it).
  constructor(element, { series, height = 150, yFormat = formatNumber, log = false }) {
    this.element = element;
    this.series = series.map((s) => ({ dots: false, ...s, points: [] }));
    this.height = height;
    this.yFormat = yFormat;
    this.log = log;
    this.zoomed = false;
    this.empty = element.appendChild(Object.assign(document.createElement("p"), {
      className: "chart-empty muted small",
      textContent: "waiting for the first points…",
    }));
    this.plot = this.build();
    // Sized from its box, which the page's grid sets: the plot follows the window and a figure shown later.
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(element);
  }

  options() {
    const width = Math.max(this.element.clientWidth, 200);
    const yFormat = this.yFormat;
    return {
      width,
      height: this.height,
      scales: { x: { time: false }, y: this.log ? { distr: 3, log: 10 } : { auto: true } },
      cursor: { drag: { x: true, y: false, setScale: true } },
      legend: { live: true },
      // Steps are whole numbers: x ticks at whole increments only. The y ticks keep uPlot's own labels, whose
      // precision follows the tick spacing (a learning rate's ticks would all read 2.99e-3 otherwise).
      axes: [{ ...AXIS, incrs: STEP_INCREMENTS }, { ...AXIS, size: 72 }],
      series: [
        { label: "step", value: (u, v) => (v === null || v === undefined ? "–" : String(v)) },
        ...this.series.map((s) => ({
          label: s.name,
          stroke: s.color,
          width: 1.6,
          spanGaps: true,
          points: s.dots ? { show: true, size: 6, fill: s.color } : {},
          value: (u, v) => (v === null || v === undefined ? "–" : yFormat(v)),
        })),
      ],
      hooks: { setScale: [(u, key) => this.scaleChanged(u, key)] },
    };
  }

  build() {
    const plot = new uPlot(this.options(), this.data(), this.element);
    this.element.dataset.yScale = plot.scales.y.distr === 3 ? "log" : "linear"; // what uPlot draws, not what was asked
    return plot;
  }

  // On a log scale a loss of 0 (or below) has no place: it is left out rather than drawn at minus infinity.
  data() {
    const data = align(this.series);
    if (this.log) for (const ys of data.slice(1)) ys.forEach((y, i) => { if (y !== null && y <= 0) ys[i] = null; });
    return data;
  }

  scaleChanged(u, key) {
    if (key !== "x") return;
    const xs = u.data[0];
    const { min, max } = u.scales.x;
    // Zoomed in when the range shown is narrower than the data: new points then leave the view alone.
    this.zoomed = xs.length > 1 && (min > xs[0] || max < xs[xs.length - 1]);
    if (min !== null && min !== undefined) this.element.dataset.xMin = String(min);
    if (max !== null && max !== undefined) this.element.dataset.xMax = String(max);
    this.element.dataset.zoomed = String(this.zoomed);
  }

  fit() {
    const width = this.element.clientWidth;
    if (width && width !== this.plot.width) this.plot.setSize({ width, height: this.height });
  }

  setLog(log) {
    if (log === this.log) return;
    this.log = log;
    this.plot.destroy();
    this.plot = this.build();
  }

  setPoints(index, points) {
    this.series[index].points = points.filter(finite);
    this.scheduleDraw();
  }

  addPoints(index, points) {
    const s = this.series[index];
    const last = s.points.length ? s.points[s.points.length - 1].x : -Infinity;
    for (const p of points) if (p.x > last && finite(p)) s.points.push(p);
    this.scheduleDraw();
  }

  // Points arrive one event at a time: draw once per frame, whatever arrived by then.
  scheduleDraw() {
    if (this.pending || this.disposed) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = null;
      this.draw();
    });
  }

  draw() {
    this.plot.setData(this.data(), !this.zoomed);
    this.element.dataset.points = String(this.series[0].points.length);
    this.empty.hidden = this.series.some((s) => s.points.length);
  }

  dispose() {
    this.disposed = true;
    cancelAnimationFrame(this.pending);
    this.resize.disconnect();
    this.plot.destroy();
  }
}
