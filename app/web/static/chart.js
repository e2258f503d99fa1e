// A small line chart on <canvas>: several series, nice axis ticks, a hover read-out, crisp on HiDPI.
// Long series are reduced to the min and max per pixel column when drawn, so spikes stay visible.

const PAD = { left: 58, right: 14, top: 12, bottom: 30 };

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const unit = raw / power;
  return (unit < 1.5 ? 1 : unit < 3 ? 2 : unit < 7 ? 5 : 10) * power;
}

function ticks(min, max, count) {
  if (!(max > min)) return [min];
  const step = niceStep(max - min, count);
  const out = [];
  // From integer multiples, rounded: adding 0.2 five times does not make 2, and 2 must read as a whole step.
  for (let k = Math.ceil(min / step - 1e-9); k <= Math.floor(max / step + 1e-9); k += 1) {
    out.push(parseFloat((k * step).toPrecision(12)));
  }
  return out;
}

export function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  return Number(v.toPrecision(4)).toString();
}

// Per pixel column keep the first, lowest and highest point: the shape survives any length.
function decimate(points, toX, width) {
  if (points.length <= width * 2) return points;
  const out = [];
  let column = null, lo = null, hi = null, first = null;
  const flush = () => {
    if (first === null) return;
    const kept = [first, lo, hi].filter((p, i, all) => all.indexOf(p) === i).sort((a, b) => a.x - b.x);
    out.push(...kept);
  };
  for (const p of points) {
    const c = Math.floor(toX(p.x));
    if (c !== column) { flush(); column = c; first = lo = hi = p; continue; }
    if (p.y < lo.y) lo = p;
    if (p.y > hi.y) hi = p;
  }
  flush();
  return out;
}

export class LineChart {
  constructor(canvas, { series, yFormat = formatNumber }) {
    this.canvas = canvas;
    this.series = series.map((s) => ({ dots: false, ...s, points: [] }));
    this.yFormat = yFormat;
    this.hoverX = null;
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
    canvas.addEventListener("mousemove", (e) => { this.hoverX = e.offsetX; this.draw(); });
    canvas.addEventListener("mouseleave", () => { this.hoverX = null; this.draw(); });
  }

  setPoints(index, points) {
    this.series[index].points = points.filter((p) => p.y !== null && p.y !== undefined && Number.isFinite(p.y));
    this.scheduleDraw();
  }

  addPoints(index, points) {
    const s = this.series[index];
    const last = s.points.length ? s.points[s.points.length - 1].x : -Infinity;
    for (const p of points) {
      if (p.x > last && p.y !== null && p.y !== undefined && Number.isFinite(p.y)) s.points.push(p);
    }
    this.scheduleDraw();
  }

  scheduleDraw() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.draw(); });
  }

  dispose() { this.resize.disconnect(); }

  bounds() {
    const all = this.series.flatMap((s) => s.points);
    if (!all.length) return null;
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const p of all) {
      x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x); y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
    }
    if (x1 === x0) x1 = x0 + 1;
    const margin = (y1 - y0) * 0.06 || Math.abs(y0) * 0.1 || 1;
    return { x0, x1, y0: y0 - margin, y1: y1 + margin };
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    canvas.dataset.points = String(this.series[0].points.length);
    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue("--chart-ink").trim() || "#555";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#eee";
    ctx.font = "11px system-ui, sans-serif";
    const b = this.bounds();
    if (!b) {
      ctx.fillStyle = ink;
      ctx.textAlign = "center";
      ctx.fillText("waiting for the first points…", width / 2, height / 2);
      return;
    }
    const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
    const toX = (x) => PAD.left + ((x - b.x0) / (b.x1 - b.x0)) * plotW;
    const toY = (y) => PAD.top + (1 - (y - b.y0) / (b.y1 - b.y0)) * plotH;
    this.drawAxes(ctx, b, toX, toY, ink, grid, plotW);
    ctx.save();
    ctx.beginPath();
    ctx.rect(PAD.left, PAD.top, plotW, plotH);
    ctx.clip();
    for (const s of this.series) this.drawSeries(ctx, s, toX, toY, plotW);
    ctx.restore();
    if (this.hoverX !== null && this.hoverX >= PAD.left) this.drawHover(ctx, b, toX, toY, ink, plotH);
  }

  drawAxes(ctx, b, toX, toY, ink, grid, plotW) {
    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of ticks(b.y0, b.y1, 5)) {
      const y = Math.round(toY(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(PAD.left, y); ctx.lineTo(PAD.left + plotW, y); ctx.stroke();
      ctx.fillText(this.yFormat(v), PAD.left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xTicks = ticks(b.x0, b.x1, Math.max(2, Math.floor(plotW / 90))).filter((v) => Number.isInteger(v));
    for (const v of xTicks) ctx.fillText(formatNumber(v), toX(v), this.canvas.clientHeight - PAD.bottom + 8);
    ctx.textAlign = "right";
    ctx.fillText("step", PAD.left + plotW, this.canvas.clientHeight - 12);
  }

  drawSeries(ctx, s, toX, toY, plotW) {
    if (!s.points.length) return;
    const pts = decimate(s.points, toX, plotW);
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(toX(p.x), toY(p.y)) : ctx.moveTo(toX(p.x), toY(p.y))));
    ctx.stroke();
    if (s.dots || pts.length === 1) {
      for (const p of pts) { ctx.beginPath(); ctx.arc(toX(p.x), toY(p.y), 3, 0, 2 * Math.PI); ctx.fill(); }
    }
  }

  drawHover(ctx, b, toX, toY, ink, plotH) {
    const x = b.x0 + ((this.hoverX - PAD.left) / (this.canvas.clientWidth - PAD.left - PAD.right)) * (b.x1 - b.x0);
    const lines = [];
    let step = null;
    for (const s of this.series) {
      if (!s.points.length) continue;
      const near = s.points.reduce((best, p) => (Math.abs(p.x - x) < Math.abs(best.x - x) ? p : best));
      step = step ?? near.x;
      lines.push([s.color, `${s.name}: ${this.yFormat(near.y)} @ ${near.x}`]);
      ctx.fillStyle = s.color;
      ctx.beginPath(); ctx.arc(toX(near.x), toY(near.y), 3.5, 0, 2 * Math.PI); ctx.fill();
    }
    if (step === null) return;
    ctx.strokeStyle = ink;
    ctx.globalAlpha = 0.35;
    ctx.beginPath(); ctx.moveTo(toX(step), PAD.top); ctx.lineTo(toX(step), PAD.top + plotH); ctx.stroke();
    ctx.globalAlpha = 1;
    const boxW = Math.max(...lines.map(([, t]) => ctx.measureText(t).width)) + 16;
    const left = Math.min(this.hoverX + 10, this.canvas.clientWidth - boxW - 4);
    ctx.fillStyle = "rgba(255,255,255,0.92)";
    ctx.fillRect(left, PAD.top + 4, boxW, lines.length * 16 + 8);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    lines.forEach(([color, text], i) => { ctx.fillStyle = color; ctx.fillText(text, left + 8, PAD.top + 9 + i * 16); });
  }
}
