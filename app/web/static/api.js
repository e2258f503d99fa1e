// The dashboard's client of the public API: the same endpoints and bearer keys as any script.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.problems = (body && body.problems) || [];
  }
}

// What this page has read with an ETag: path -> {etag, text}, newest last. The text, not the object, so every
// caller parses its own copy and none can change what is kept. The ETag hashes the exact bytes and the server
// checks access before it answers 304, so a 304 means "these bytes" whoever asks: the path alone is the key.
const validators = new Map();
const MAX_VALIDATORS = 32;

function remember(path, etag, text) {
  validators.delete(path);
  validators.set(path, { etag, text });
  if (validators.size > MAX_VALIDATORS) validators.delete(validators.keys().next().value);
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  async request(method, path, { json, form, signal, headers = {} } = {}) {
    const init = { method, headers: this.headers(headers), signal };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form;
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
    if (!response.ok) throw new ApiError(response.status, body);
    return { body, headers: response.headers };
  }

  async get(path, options) { return (await this.request("GET", path, options)).body; }

  // GET that sends back the ETag of the last answer for this path: {body, headers, changed}; a 304 answers with
  // the body kept from before and changed false. Routes without an ETag answer in full every time.
  async getFresh(path, { signal } = {}) {
    const kept = validators.get(path);
    const headers = kept ? { "If-None-Match": kept.etag } : {};
    // A request carrying If-None-Match bypasses the browser's cache, so a 304 reaches this code as it is.
    const response = await fetch(path, { headers: this.headers(headers), signal });
    if (response.status === 304 && kept) return { body: JSON.parse(kept.text), headers: response.headers, changed: false };
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
    if (!response.ok) throw new ApiError(response.status, body);
    const etag = response.headers.get("ETag");
    if (etag) remember(path, etag, text);
    else validators.delete(path);
    return { body, headers: response.headers, changed: true };
  }

  async post(path, json) { return (await this.request("POST", path, { json })).body; }
  async upload(file, name) {
    const form = new FormData();
    form.append("file", file);
    if (name) form.append("name", name);
    return (await this.request("POST", "/datasets", { form })).body;
  }

  // Artifacts need the key, so a plain link cannot fetch them: fetch, then hand the browser a blob.
  async download(url, filename) {
    const response = await fetch(url, { headers: this.headers() });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const href = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10_000);
  }

  // GET /jobs/{id}/events as an async iterator of {event, id, data}. EventSource cannot send an
  // Authorization header, so this reads the stream with fetch and parses the SSE lines itself.
  // follow false: what happened so far (the history), then the stream ends.
  async *events(jobId, lastEventId, signal, { follow = true } = {}) {
    const headers = this.headers(lastEventId ? { "Last-Event-ID": lastEventId } : {});
    const query = follow ? "" : "?follow=false";
    const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/events${query}`, { headers, signal });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let current = { event: "message", id: null, data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (current.data.length) yield { event: current.event, id: current.id, data: JSON.parse(current.data.join("\n")) };
          current = { event: "message", id: null, data: [] };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") current.data.push(value);
          else if (field === "event") current.event = value;
          else if (field === "id") current.id = value;
        }
      }
    }
  }
}
