// #/new: upload a dataset (or pick one), describe the job, see the spec it makes, submit it.

import { bytes, errorBox, h } from "./dom.js";

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

function numberInput(id, value, attrs = {}) {
  return h("input", { id, name: id, type: "number", value: String(value), step: "any", ...attrs });
}

function optional(value) {
  return value === "" ? null : Number(value);
}

export function jobFormView(view, api, onUnauthorized) {
  const $ = {};
  const input = (id, attrs) => ($[id] = h("input", { id, name: id, ...attrs }));
  const select = (id, options, value) =>
    ($[id] = h("select", { id, name: id }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
  const num = (id, value, attrs) => ($[id] = numberInput(id, value, attrs));

  const datasetInfo = h("div", { class: "muted small", id: "dataset-info" });
  const uploadMessage = h("div");
  const message = h("div", { id: "form-message" });
  const preview = h("pre", { class: "spec", id: "spec-preview" });
  let datasets = [];

  const formatFields = {
    template: field("Template", input("template", { placeholder: "{quote} ->: {tags}" }), "Each row rendered with its {column} values."),
    text: field("Text column", input("text_field", { value: "text" })),
    prompt_completion: h(
      "div",
      {},
      field("Prompt template", input("prompt", { value: "{prompt}" }), "No loss on the prompt."),
      field("Completion template", input("completion", { value: "{completion}" })),
    ),
    chat: field("Messages column", input("chat_field", { value: "messages" }), "OpenAI-style [{role, content}]."),
  };

  function spec() {
    const type = $.format_type.value;
    const format = { type };
    if (type === "template") format.template = $.template.value;
    if (type === "text") format.field = $.text_field.value;
    if (type === "prompt_completion") Object.assign(format, { prompt: $.prompt.value, completion: $.completion.value });
    if (type === "chat") format.field = $.chat_field.value;
    const bits = $.quantization.value;
    const out = {
      name: $.name.value || null,
      base_model: $.base_model.value.trim(),
      dataset: $.dataset.value,
      format,
      quantization: bits === "none" ? null : { bits: Number(bits) },
      lora: { r: Number($.lora_r.value), alpha: Number($.lora_alpha.value) },
      training: {
        epochs: Number($.epochs.value),
        max_steps: optional($.max_steps.value),
        learning_rate: Number($.learning_rate.value),
        lr_scheduler: $.lr_scheduler.value,
        batch_size: Number($.batch_size.value),
        gradient_accumulation_steps: Number($.grad_accum.value),
        max_seq_length: Number($.max_seq_length.value),
        eval_fraction: Number($.eval_fraction.value),
      },
    };
    if ($.webhook_url.value.trim()) out.webhook_url = $.webhook_url.value.trim();
    return out;
  }

  function update() {
    for (const [type, el] of Object.entries(formatFields)) el.hidden = type !== $.format_type.value;
    const chosen = datasets.find((d) => d.id === $.dataset.value);
    datasetInfo.textContent = chosen ? `${chosen.rows} rows · columns: ${chosen.columns.join(", ")} · ${bytes(chosen.size_bytes)}` : "";
    if (chosen && !$.template.value && $.format_type.value === "template") {
      $.template.placeholder = chosen.columns.map((c) => `{${c}}`).join(" ");
    }
    preview.textContent = JSON.stringify(spec(), null, 2);
  }

  async function loadDatasets(selectId) {
    const page = await api.get("/datasets?limit=200").catch((err) => (onUnauthorized(err), { data: [] }));
    datasets = page.data;
    $.dataset.replaceChildren(
      ...(datasets.length ? [] : [h("option", { value: "" }, "upload a dataset first")]),
      ...datasets.map((d) => h("option", { value: d.id, selected: d.id === selectId }, `${d.name} (${d.rows} rows, ${d.format})`)),
    );
    update();
  }

  const fileInput = h("input", { id: "dataset-file", type: "file", accept: ".jsonl,.json,.csv,.tsv,.parquet" });
  const uploadName = h("input", { id: "dataset-name", placeholder: "name (optional)" });
  const uploadButton = h("button", { type: "button", id: "upload-button" }, "Upload");
  uploadButton.addEventListener("click", async () => {
    if (!fileInput.files.length) return uploadMessage.replaceChildren(errorBox(new Error("Choose a file first.")));
    uploadButton.disabled = true;
    try {
      const dataset = await api.upload(fileInput.files[0], uploadName.value.trim());
      uploadMessage.replaceChildren(h("div", { class: "ok" }, `Uploaded ${dataset.name}: ${dataset.rows} rows.`));
      await loadDatasets(dataset.id);
    } catch (err) {
      uploadMessage.replaceChildren(errorBox(err));
    } finally {
      uploadButton.disabled = false;
    }
  });

  const form = h(
    "form",
    { id: "job-form", class: "job-form", oninput: update, onchange: update },
    h("fieldset", {}, h("legend", {}, "Data"),
      h("div", { class: "upload" }, fileInput, uploadName, uploadButton), uploadMessage,
      field("Dataset", (($.dataset = h("select", { id: "dataset", name: "dataset", required: true })), $.dataset)), datasetInfo,
      field("Format", select("format_type", [["template", "template"], ["text", "text column"], ["prompt_completion", "prompt / completion"], ["chat", "chat messages"]], "template")),
      Object.values(formatFields)),
    h("fieldset", {}, h("legend", {}, "Model"),
      field("Name", input("name", { placeholder: "quotes-tagger" })),
      field("Base model", input("base_model", { required: true, placeholder: "TinyLlama/TinyLlama-1.1B-Chat-v1.0" }), "A Hub id, or a directory in FT_MODELS_DIR."),
      field("Quantization", select("quantization", [["4", "4-bit QLoRA (NF4)"], ["8", "8-bit"], ["none", "none (plain LoRA)"]], "4")),
      h("div", { class: "row" }, field("LoRA r", num("lora_r", 16, { min: 1 })), field("LoRA alpha", num("lora_alpha", 32, { min: 1 })))),
    h("fieldset", {}, h("legend", {}, "Training"),
      h("div", { class: "row" }, field("Epochs", num("epochs", 1, { min: 0 })), field("Max steps", num("max_steps", "", { min: 1, placeholder: "from epochs" }))),
      h("div", { class: "row" }, field("Learning rate", num("learning_rate", 0.0002, { min: 0 })),
        field("Schedule", select("lr_scheduler", ["linear", "cosine", "constant", "constant_with_warmup"].map((s) => [s, s]), "linear"))),
      h("div", { class: "row" }, field("Batch size", num("batch_size", 4, { min: 1 })), field("Grad. accumulation", num("grad_accum", 1, { min: 1 }))),
      h("div", { class: "row" }, field("Max sequence length", num("max_seq_length", 512, { min: 8 })), field("Eval fraction", num("eval_fraction", 0, { min: 0, max: 0.99 }))),
      field("Webhook URL", input("webhook_url", { type: "url", placeholder: "https://… (optional)" }), "POSTed when the job ends.")),
    message,
    h("button", { type: "submit", class: "primary", id: "submit-job" }, "Start training"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await api.post("/jobs", spec());
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      onUnauthorized(err);
      message.replaceChildren(errorBox(err));
    }
  });

  view.replaceChildren(
    h("section", {}, h("div", { class: "toolbar" }, h("a", { href: "#/" }, "← Jobs"), h("h1", {}, "New job")),
      h("div", { class: "form-layout" }, form, h("aside", {}, h("h2", {}, "Spec"), preview))),
  );
  loadDatasets();
  return () => {};
}
