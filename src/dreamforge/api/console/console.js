// The Dream Forge console: plain modules, no build step. Everything it shows comes from
// the public API (/v1 and the A1111 sampler list), as any other client would use it.

const $ = (selector, root = document) => root.querySelector(selector);
const KEY = "dreamforge.apiKey";

// ---- talking to the API -------------------------------------------------------------

class Refused extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: headers(options.body ? { "Content-Type": "application/json" } : {}),
  });
  if (response.status === 401) askForKey("This server wants an API key.");
  if (!response.ok) throw new Refused(response.status, await response.json().catch(() => ({})));
  return response.json();
}

// Server-Sent Events over fetch, since EventSource cannot send an Authorization header.
// Calls onEvent(type, data) for each event; resolves when the stream ends.
async function follow(path, onEvent, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw new Refused(response.status, await response.json().catch(() => ({})));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

// ---- receipts: read from the PNG itself, and its bytes checked against the listing ----

function pngText(bytes) {
  const view = new DataView(bytes.buffer);
  const chunks = {};
  for (let at = 8; at + 8 <= bytes.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === "tEXt") {
      const data = bytes.subarray(at + 8, at + 8 + length);
      const zero = data.indexOf(0);
      const latin1 = new TextDecoder("latin1");
      chunks[latin1.decode(data.subarray(0, zero))] = latin1.decode(data.subarray(zero + 1));
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return chunks;
}

async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- small helpers ------------------------------------------------------------------

function show(id) {
  for (const section of document.querySelectorAll("main > section[data-view]")) {
    section.hidden = section.id !== id;
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === id || (id === "job" && link.dataset.nav === "jobs"));
  }
}

function notice(message) {
  const box = $("#notice");
  box.textContent = message || "";
  box.hidden = !message;
}

function askForKey(message) {
  $("#key").hidden = false;
  $("#key-button").hidden = false;
  notice(message);
}

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const size = (bytes) => (bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`);
const when = (iso) => new Date(iso).toLocaleString();

// ---- new job --------------------------------------------------------------------------

let models = [];

async function loadForm() {
  models = (await api("/v1/models")).data.filter((m) => m.status === "ready");
  const select = $("#job-form [name=model_id]");
  select.replaceChildren(...models.map((m) => element("option", { value: m.id, textContent: m.id })));
  const samplers = await api("/sdapi/v1/samplers");
  $("#job-form [name=scheduler]").replaceChildren(
    element("option", { value: "", textContent: "model default" }),
    ...samplers.map((s) => element("option", { value: s.aliases[0], textContent: s.name })),
  );
  showDefaults();
}

function showDefaults() {
  const form = $("#job-form");
  const model = models.find((m) => m.id === form.model_id.value);
  if (!model) return;
  for (const [field, value] of Object.entries(model.defaults)) {
    if (form[field] && form[field].tagName === "INPUT") form[field].placeholder = value;
  }
  form.scheduler.options[0].textContent = `model default (${model.defaults.scheduler})`;
}

function requestFromForm(form) {
  const body = {};
  for (const [name, value] of new FormData(form)) {
    if (value === "") continue;
    body[name] = ["width", "height", "steps", "seed", "count"].includes(name) ? Number(value)
      : name === "guidance_scale" ? Number(value) : value;
  }
  return body;
}

async function submit(body) {
  const errors = $("#form-errors");
  errors.replaceChildren();
  try {
    const job = await api("/v1/jobs", { method: "POST", body: JSON.stringify(body) });
    location.hash = `#/jobs/${job.id}`;
  } catch (error) {
    const problems = error.problem?.errors || [{ field: "request", message: error.message, fix: "" }];
    errors.replaceChildren(...problems.map((p) => element("li", { textContent: `${p.field}: ${p.message}${p.fix ? ` (${p.fix})` : ""}` })));
  }
}

// ---- one job: live progress per item, gallery with receipts -------------------------

let watching = null; // the AbortController of the stream being followed

async function openJob(id) {
  watching?.abort();
  watching = new AbortController();
  show("job");
  const job = await api(`/v1/jobs/${id}`);
  $("#job-id").textContent = job.id;
  $("#job-prompt").textContent = job.spec.prompt;
  $("#job-logs").href = job.links.logs;
  const items = [...Array(job.spec.count)].map((_, index) => {
    const item = $("#item-template").content.firstElementChild.cloneNode(true);
    item.dataset.item = index;
    return item;
  });
  $("#items").replaceChildren(...items);
  $("#job-cancel").onclick = () => api(job.links.cancel, { method: "POST" }).catch((e) => notice(e.message));
  $("#job-again").onclick = () => submit(again(job.spec));
  render(job);
  const shown = new Set();
  const refresh = () => showImages(job, items, shown);
  await refresh();
  try {
    await follow(job.links.stream, (type, data) => {
      if (type === "status") render({ ...job, status: data.status });
      if (type === "progress" || type === "stage") setProgress(data.progress, data.stage);
      if (type === "progress" && data.step != null) {
        for (const index of data.items ?? [data.item_index]) {
          const bar = items[index]?.querySelector("progress");
          if (bar) bar.value = data.step / data.steps;
          const placeholder = items[index]?.querySelector(".placeholder");
          if (placeholder) placeholder.textContent = `step ${data.step} of ${data.steps}`;
        }
      }
      if (type === "artifact") refresh();
      if (type === "done") {
        render({ ...job, status: data.status, error: data.error });
        if (data.status === "succeeded") setProgress(1, "done");
      }
    }, watching.signal);
  } catch (error) {
    if (error.name !== "AbortError") notice(error.message);
  }
}

function again(spec) {
  const { prompt, negative_prompt, width, height, steps, guidance_scale, scheduler, seed, count, model_id } = spec;
  return { prompt, negative_prompt, width, height, steps, guidance_scale, scheduler, seed, count, model_id };
}

function render(job) {
  const status = $("#job-status");
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  $("#job-cancel").disabled = !["queued", "running"].includes(job.status);
  const error = $("#job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  if (job.progress != null) setProgress(job.progress, job.stage);
}

function setProgress(progress, stage) {
  $("#job-progress").value = progress;
  $("#job-percent").textContent = `${Math.round(progress * 100)}%`;
  if (stage) $("#job-stage").textContent = stage;
}

async function showImages(job, items, shown) {
  const { data } = await api(job.links.artifacts);
  for (const artifact of data) {
    if (shown.has(artifact.key) || !items[artifact.item_index]) continue;
    shown.add(artifact.key);
    const item = items[artifact.item_index];
    item.querySelector("progress").value = 1;
    const bytes = new Uint8Array(await (await fetch(artifact.url)).arrayBuffer());
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    item.querySelector(".frame").replaceChildren(element("img", { src: url, alt: `image ${artifact.item_index}` }));
    const receipt = JSON.parse(pngText(bytes).dreamforge || "{}");
    const matches = (await sha256(bytes)) === artifact.sha256;
    const rows = [
      ["seed", receipt.seed],
      ["model", receipt.model?.id],
      ["model sha256", receipt.model?.sha256?.slice(0, 16)],
      ["size", `${receipt.spec?.width}×${receipt.spec?.height}, ${receipt.spec?.steps} steps`],
      ["versions", Object.entries(receipt.versions || {}).map(([k, v]) => `${k} ${v}`).join(", ")],
      ["sha256", artifact.sha256.slice(0, 16)],
    ];
    const receiptList = item.querySelector(".receipt");
    receiptList.replaceChildren(...rows.flatMap(([term, value]) => [
      element("dt", { textContent: term }),
      element("dd", { textContent: value ?? "" }),
    ]));
    receiptList.append(
      element("dt", { textContent: "file" }),
      element("dd", { className: matches ? "verified" : "mismatch", textContent: matches ? "matches its listing" : "differs from its listing" }),
    );
    item.dataset.seed = receipt.seed;
    item.dataset.sha256 = artifact.sha256;
  }
}

// ---- jobs list: status filter, pages by cursor ------------------------------------------

const pages = { cursors: [null], at: 0, next: null };

async function loadJobs() {
  show("jobs");
  const form = $("#jobs-filter");
  const query = new URLSearchParams({ limit: form.limit.value });
  if (form.status.value) query.set("status", form.status.value);
  const cursor = pages.cursors[pages.at];
  if (cursor) query.set("cursor", cursor);
  const page = await api(`/v1/jobs?${query}`);
  pages.next = page.next_cursor;
  $("#jobs-rows").replaceChildren(...page.data.map((job) => {
    const row = element("tr", {},
      element("td", { textContent: when(job.created_at) }),
      element("td", { className: `status ${job.status}`, textContent: job.status }),
      element("td", { textContent: job.spec.count }),
      element("td", { textContent: job.spec.prompt }));
    row.dataset.id = job.id;
    row.onclick = () => { location.hash = `#/jobs/${job.id}`; };
    return row;
  }));
  $("#jobs-newer").disabled = pages.at === 0;
  $("#jobs-older").disabled = !pages.next;
}

function firstPage() {
  pages.cursors = [null];
  pages.at = 0;
  loadJobs().catch((e) => notice(e.message));
}

// ---- models and downloads -----------------------------------------------------------------

async function loadModels() {
  show("models");
  const { data } = await api("/v1/models");
  $("#models-rows").replaceChildren(...data.map((m) => element("tr", {},
    element("td", { textContent: m.id }),
    element("td", { className: `status ${m.status === "ready" ? "succeeded" : ""}`, textContent: m.status }),
    element("td", { textContent: m.base }),
    element("td", { textContent: size(m.size_bytes) }),
    element("td", { textContent: m.sha256.slice(0, 16) }))));
  try {
    const downloads = await api("/v1/downloads");
    $("#downloads-panel").hidden = false;
    $("#downloads").replaceChildren(...downloads.data.map(downloadRow));
    for (const d of downloads.data.filter((d) => ["queued", "running"].includes(d.status))) watchDownload(d);
  } catch (error) {
    if (error.status === 403) $("#downloads-panel").hidden = true; // a key without models:admin
    else throw error;
  }
}

function downloadRow(d) {
  const bar = element("progress", { max: d.bytes_total || 1, value: d.bytes_done });
  const label = element("span", { textContent: `${d.source} → ${d.model_id ?? "…"}: ${d.status}${d.error ? ` (${d.error})` : ""}` });
  const row = element("li", {}, label, bar);
  row.dataset.id = d.id;
  return row;
}

function watchDownload(d) {
  follow(d.links.stream, (type, data) => {
    const row = document.querySelector(`#downloads [data-id="${data.id}"]`);
    row?.replaceWith(downloadRow(data));
    if (data.status === "succeeded") loadModels();
  }).catch((e) => notice(e.message));
}

// ---- wiring ---------------------------------------------------------------------------------

async function route() {
  notice("");
  const [, view, id] = location.hash.match(/^#\/(\w+)\/?([\w-]*)/) || [null, "new", ""];
  try {
    if (view === "jobs" && id) await openJob(id);
    else if (view === "jobs") { watching?.abort(); await loadJobs(); }
    else if (view === "models") { watching?.abort(); await loadModels(); }
    else { watching?.abort(); show("new"); await loadForm(); }
  } catch (error) {
    if (error.status !== 401) notice(error.message);
  }
}

$("#job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submit(requestFromForm(event.target));
});
$("#job-form [name=model_id]").addEventListener("change", showDefaults);
$("#jobs-filter").addEventListener("change", firstPage);
$("#jobs-older").onclick = () => { pages.cursors[pages.at + 1] = pages.next; pages.at += 1; loadJobs(); };
$("#jobs-newer").onclick = () => { pages.at = Math.max(0, pages.at - 1); loadJobs(); };
$("#pull-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const download = await api("/v1/models", { method: "POST", body: JSON.stringify({ source: event.target.source.value }) });
    $("#downloads").prepend(downloadRow(download));
    watchDownload(download);
  } catch (error) {
    notice(error.problem?.errors?.map((p) => `${p.field}: ${p.message} (${p.fix})`).join("; ") || error.message);
  }
});
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY, $("#key-input").value.trim());
  $("#key").hidden = true;
  route();
});
$("#key-forget").onclick = () => { localStorage.removeItem(KEY); $("#key-input").value = ""; };
$("#key-button").onclick = () => { $("#key").hidden = !$("#key").hidden; };
window.addEventListener("hashchange", route);
if (localStorage.getItem(KEY)) $("#key-button").hidden = false;
route();
