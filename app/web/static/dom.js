// Building the page from data without innerHTML: every string lands as text, so job names cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes set as markup.
    else if (key === "style") el.style.cssText = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function badge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { status } }, status);
}

export function eta(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  const hours = Math.floor(s / 3600), minutes = Math.floor((s % 3600) / 60), secs = s % 60;
  return hours ? `${hours}h ${String(minutes).padStart(2, "0")}m` : minutes ? `${minutes}m ${String(secs).padStart(2, "0")}s` : `${secs}s`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function progressBar(step, total) {
  const share = total ? Math.min(1, step / total) : 0;
  return h(
    "div",
    { class: "progress", title: `${step} of ${total ?? "?"} steps` },
    h("div", { class: "progress-fill", style: `width: ${(share * 100).toFixed(1)}%` }),
    h("span", { class: "progress-text" }, `${step} / ${total ?? "?"}`),
  );
}

export function errorBox(err) {
  const box = h("div", { class: "error", role: "alert" }, err.message || String(err));
  if (err.problems && err.problems.length) {
    box.append(h("ul", {}, err.problems.map((p) => h("li", {}, `${p.field ?? `row ${p.row}`}: ${p.message}`))));
  }
  return box;
}
