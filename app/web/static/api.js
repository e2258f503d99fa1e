// The dashboard's client of the public API: the same endpoints and bearer keys as any script.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.problems = (body && body.problems) || [];
  }
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  async request(method, path, { json, form, signal } = {}) {
    const init = { method, headers: this.headers(), signal };
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
  async *events(jobId, lastEventId, signal) {
    const headers = this.headers(lastEventId ? { "Last-Event-ID": lastEventId } : {});
    const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
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
