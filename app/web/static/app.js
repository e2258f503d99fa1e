// The dashboard: sign in with an API key, then the job list (#/), a new-job form (#/new) and a job page (#/jobs/ID).

import { Api, ApiError } from "./api.js";
import { badge, errorBox, eta, h, progressBar, when } from "./dom.js";
import { jobFormView } from "./form.js";
import { jobView } from "./job.js";

const KEY_STORAGE = "ft_api_key";
const view = document.getElementById("view");
const nav = document.getElementById("nav");
let dispose = () => {};

function signInView(onSignedIn) {
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "ft_…", required: true });
  const message = h("div");
  const form = h(
    "form",
    { class: "card signin", id: "signin-form" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an API key; an operator makes one with ", h("code", {}, "ftctl keys create NAME"), "."),
    h("label", { for: "api-key" }, "API key"),
    input,
    message,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const api = new Api(input.value.trim());
    try {
      await api.get("/jobs?limit=1");
      localStorage.setItem(KEY_STORAGE, api.key);
      onSignedIn();
    } catch (err) {
      message.replaceChildren(errorBox(err.status === 401 ? new Error("That key was not accepted.") : err));
    }
  });
  view.replaceChildren(form);
  input.focus();
  return () => {};
}

function jobRow(job) {
  const step = job.progress.step, total = job.progress.total_steps;
  const loss = job.latest.loss;
  return h(
    "tr",
    { class: "job-row", dataset: { jobId: job.id }, onclick: () => (location.hash = `#/jobs/${job.id}`) },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.name || job.id), h("div", { class: "muted small" }, job.id)),
    h("td", {}, badge(job.status)),
    h("td", { class: "progress-cell" }, progressBar(step, total)),
    h("td", {}, TERMINAL_OR_QUEUED.has(job.status) ? "–" : eta(job.progress.eta_seconds)),
    h("td", { class: "num" }, loss === null ? "–" : loss.toFixed(4)),
    h("td", { class: "muted" }, when(job.created_at)),
  );
}
const TERMINAL_OR_QUEUED = new Set(["succeeded", "failed", "cancelled", "queued"]);

function jobListView(api) {
  const body = h("tbody");
  const status = h(
    "select",
    { id: "status-filter", onchange: () => refresh() },
    ["", "queued", "running", "succeeded", "failed", "cancelling", "cancelled"].map((s) =>
      h("option", { value: s }, s || "all statuses"),
    ),
  );
  const message = h("div");
  let timer = null;
  let shown = null; // the list the rows show now
  async function refresh() {
    clearTimeout(timer);
    try {
      const query = status.value ? `&status=${status.value}` : "";
      // With If-None-Match: an unchanged list is a 304 and leaves the rows (and the row under the mouse) alone.
      const path = `/jobs?limit=100${query}`;
      const { body: page, changed } = await api.getFresh(path);
      if (changed || path !== shown) {
        shown = path;
        body.replaceChildren(...page.data.map(jobRow));
        if (!page.data.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted empty" }, "No jobs yet.")));
      }
      message.replaceChildren();
    } catch (err) {
      message.replaceChildren(errorBox(err));
    }
    timer = setTimeout(refresh, 3000);
  }
  view.replaceChildren(
    h(
      "section",
      {},
      h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), status, h("a", { class: "button primary", href: "#/new" }, "New job")),
      message,
      h(
        "table",
        { class: "jobs", id: "jobs-table" },
        h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "ETA", "Loss", "Created"].map((t) => h("th", {}, t)))),
        body,
      ),
    ),
  );
  refresh();
  return () => clearTimeout(timer);
}

function route() {
  dispose();
  const key = localStorage.getItem(KEY_STORAGE);
  nav.hidden = !key;
  if (!key) {
    dispose = signInView(route);
    return;
  }
  const api = new Api(key);
  const onUnauthorized = (err) => {
    if (err instanceof ApiError && err.status === 401) signOut();
  };
  const hash = location.hash || "#/";
  const jobMatch = hash.match(/^#\/jobs\/([\w-]+)$/);
  if (jobMatch) dispose = jobView(view, api, jobMatch[1], onUnauthorized);
  else if (hash === "#/new") dispose = jobFormView(view, api, onUnauthorized);
  else dispose = jobListView(api);
}

function signOut() {
  localStorage.removeItem(KEY_STORAGE);
  location.hash = "#/";
  route();
}

document.getElementById("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
