// ditlab serve: the page. Everything it offers comes from GET /api/models (Pipeline.describe()), so
// class, text and video models each get their own fields without changes here.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let limits = {};
let current = null; // {id, source}

function model() {
  return models.find((m) => m.name === $("model").value) || models[0];
}

function setOptions(select, items) {
  select.replaceChildren(...items.map(([value, text]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    return option;
  }));
}

function showModel() {
  const m = model();
  const kind = m.condition;
  document.querySelectorAll(".cond-class").forEach((el) => { el.hidden = kind !== "class"; });
  document.querySelectorAll(".cond-text").forEach((el) => { el.hidden = kind !== "text"; });
  document.querySelectorAll(".video-only").forEach((el) => { el.hidden = !m.video; });
  if (kind === "class") {
    setOptions($("class"), [["", "all classes"], ...(m.class_names || []).map((n, i) => [String(i), `${i}: ${n}`])]);
  }
  setOptions($("sampler"), m.samplers.map((s) => [s, s === m.defaults.sampler ? `${s} (default)` : s]));
  $("sampler").value = m.defaults.sampler;
  $("steps").value = m.defaults.steps;
  $("steps").max = limits.max_steps;
  $("cfg").value = m.defaults.cfg_scale;
  $("cfg").max = limits.max_cfg;
  $("num").max = limits.max_num;
  if (m.video) { // the model's frame count (more where its pipeline takes frames), its fps when it names one
    $("frames").value = m.latent_shape[1];
    $("frames").max = m.max_frames || m.latent_shape[1];
    $("fps").value = m.fps || 8;
  }
  const size = m.image_size ? `${m.image_size}×${m.image_size} px` : "";
  const what = { class: `${(m.class_names || []).length} classes`, text: "text prompts", none: "unconditional" }[kind];
  $("model-info").textContent = [what, m.video ? `video, ${m.latent_shape[1]} frames` : "", size,
    `${m.process}`, m.step ? `step ${m.step}` : ""].filter(Boolean).join(" · ");
  clearErrors();
}

function clearErrors() {
  document.querySelectorAll(".error").forEach((el) => { el.textContent = ""; });
  document.querySelectorAll(".field.invalid").forEach((el) => el.classList.remove("invalid"));
}

function showError(err) {
  const field = err.field && document.querySelector(`.error[data-for="${err.field}"]`);
  const target = field && !field.closest("[hidden]") ? field : $("form-error");
  target.textContent = err.error;
  if (field) { field.closest(".field")?.classList.add("invalid"); }
  setStatus(`Error: ${err.error}`, "error");
}

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

function number(id) {
  const raw = $(id).value.trim();
  if (raw === "") { return undefined; }
  const value = Number(raw);
  return Number.isFinite(value) ? value : raw; // the server names what is wrong with text
}

function body() {
  const m = model();
  const req = { model: m.name, num: number("num"), steps: number("steps"), cfg: number("cfg"),
    sampler: $("sampler").value, wait: false };
  if (!$("random-seed").checked) { req.seed = number("seed"); }
  if (m.condition === "class" && $("class").value !== "") { req.class = Number($("class").value); }
  if (m.condition === "text") {
    req.prompt = $("prompt").value;
    if ($("negative_prompt").value.trim()) { req.negative_prompt = $("negative_prompt").value; }
  }
  if (m.video) { req.frames = number("frames"); req.fps = number("fps"); }
  Object.keys(req).forEach((k) => req[k] === undefined && delete req[k]);
  return req;
}

function running(on) {
  $("generate").disabled = on;
  $("cancel").disabled = !on;
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  const req = body();
  let answer;
  try {
    const response = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(req) });
    answer = await response.json();
    if (!response.ok) { showError(answer); return; }
  } catch (e) {
    setStatus(`The server did not answer (${e}).`, "error");
    return;
  }
  follow(answer.job_id, req);
}

function follow(id, req) {
  running(true);
  $("progress").value = 0;
  $("preview-box").hidden = true;
  setStatus("Queued…");
  const source = new EventSource(`/api/jobs/${id}/events`);
  current = { id, source };
  source.addEventListener("progress", (e) => {
    const s = JSON.parse(e.data);
    if (s.status === "queued") {
      setStatus(s.position > 0 ? `Queued: ${s.position} request(s) ahead…` : "Starting…");
      return;
    }
    $("progress").max = s.total;
    $("progress").value = s.step;
    const batch = s.batch_size > s.settings.num ? ` (batched with others: ${s.batch_size} images)` : "";
    setStatus(`Step ${s.step} / ${s.total}${batch}`, "running");
    if (s.preview) {
      $("preview").src = `data:image/png;base64,${s.preview}`;
      $("preview-caption").textContent = `x0 prediction at step ${s.preview_step} of ${s.total}`;
      $("preview-box").hidden = false;
    }
  });
  source.addEventListener("end", (e) => {
    source.close();
    finish(id, JSON.parse(e.data));
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) { running(false); setStatus("Lost the server.", "error"); }
  };
}

async function finish(id, state) {
  running(false);
  current = null;
  if (state.status === "cancelled") {
    setStatus(`Cancelled at step ${state.step} of ${state.total}.`, "cancelled");
    return;
  }
  const response = await fetch(`/api/jobs/${id}`);
  const result = await response.json();
  if (!response.ok) { showError(result); return; }
  $("progress").value = $("progress").max;
  $("preview-box").hidden = true;
  setStatus(`Done: ${result.images.length} image(s) in ${result.seconds.toFixed(2)} s.`, "done");
  addToGallery(result);
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  a.setAttribute("download", "");
  return a;
}

function addToGallery(result) {
  document.querySelector("#gallery .empty")?.remove();
  const card = document.createElement("article");
  card.className = "card";
  card.dataset.job = result.job_id;
  const images = document.createElement("div");
  images.className = "images";
  result.images.forEach((png, i) => {
    const a = document.createElement("a");
    a.href = result.downloads.png[i];
    a.setAttribute("download", "");
    a.title = `${result.descriptions[i] || "sample"} — download PNG`;
    const img = document.createElement("img");
    img.src = result.videos ? `data:image/gif;base64,${result.videos[i]}` : `data:image/png;base64,${png}`;
    img.alt = result.descriptions[i] || `sample ${i}`;
    img.className = "sample";
    a.append(img);
    images.append(a);
  });
  const s = result.settings;
  const what = s.class !== undefined ? `class ${result.descriptions.filter((d, i, a) => a.indexOf(d) === i).join(", ")}`
    : s.prompt !== undefined ? `“${s.prompt.join(" | ")}”` : "unconditional";
  const info = document.createElement("p");
  info.className = "settings";
  info.textContent = `${s.model} · ${what} · ${s.sampler}, ${s.steps} steps, guidance ${s.cfg}, seed ${s.seed}` +
    (s.frames ? ` · ${s.frames} frames @ ${s.fps} fps` : "");
  const downloads = document.createElement("p");
  downloads.className = "downloads";
  downloads.append(link(result.downloads.npz, "all as .npz"));
  (result.downloads.gif || []).forEach((href, i) => downloads.append(" ", link(href, `GIF ${i}`)));
  (result.downloads.mp4 || []).forEach((href, i) => downloads.append(" ", link(href, `MP4 ${i}`)));
  card.append(images, info, downloads);
  $("gallery").prepend(card);
}

async function cancel() {
  if (!current) { return; }
  $("cancel").disabled = true;
  setStatus("Cancelling…");
  await fetch(`/api/jobs/${current.id}/cancel`, { method: "POST" });
}

async function start() {
  try {
    const response = await fetch("/api/models");
    const answer = await response.json();
    models = answer.models;
    limits = answer.limits;
  } catch (e) {
    setStatus(`Could not load the models (${e}).`, "error");
    return;
  }
  setOptions($("model"), models.map((m) => [m.name, m.name]));
  showModel();
  $("model").addEventListener("change", showModel);
  $("random-seed").addEventListener("change", () => { $("seed").disabled = $("random-seed").checked; });
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  document.body.dataset.ready = "true";
}

start();
