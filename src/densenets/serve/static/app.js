// The page of `densenets serve`: calls the /v1 API and builds every element with textContent,
// so a file name or class name is shown as text, never read as HTML.
"use strict";

const state = { key: "", model: null };
const $ = (id) => document.getElementById(id);

function authHeaders() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const response = await fetch(path, { ...(options || {}), headers: authHeaders() });
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs an API key: enter it above");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(response.status + ": " + (detail || response.statusText));
  }
  return body;
}

async function loadModel() {
  try {
    const model = await api("/v1/model");
    state.model = model;
    $("model-name").textContent = model.model;
    $("model-backend").textContent = model.backend;
    $("model-precision").textContent = model.precision_note || model.precision;
    $("model-classes").textContent = model.classes.length + (model.multilabel ? " (multi-label)" : "");
    say("Ready: choose or drop images.");
  } catch (error) {
    say(error.message, true);
  }
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function renderClasses(list, prediction, positives) {
  list.replaceChildren();
  for (const entry of prediction.top_k) {
    const item = document.createElement("li");
    if (positives.has(entry.label)) item.classList.add("positive");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = entry.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", entry.label + " " + percent(entry.probability));
    const fill = document.createElement("span");
    fill.style.width = percent(entry.probability);
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = percent(entry.probability);
    item.append(name, bar, value);
    list.append(item);
  }
}

async function showHeatMap(card, file) {
  const chosen = card.querySelector(".explain-class").value;
  const form = new FormData();
  form.append("file", file, file.name);
  if (chosen) form.append("class", chosen);
  const caption = card.querySelector(".heat-caption");
  caption.textContent = "Heat map: computing…";
  try {
    const answer = await api("/v1/explain", { method: "POST", body: form });
    const img = card.querySelector(".heatmap");
    img.src = "data:image/png;base64," + answer.overlay_png;
    const classes = answer.explained.map((e) => e.class + " " + percent(e.probability)).join(", ");
    img.alt = "Heat map (" + answer.method + ") for " + classes;
    caption.textContent = "Heat map (" + answer.method + "): " + classes;
    card.querySelector(".heat").hidden = false;
  } catch (error) {
    caption.textContent = "Heat map: " + error.message;
    card.querySelector(".heat").hidden = false;
  }
}

function renderResult(file, prediction) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = prediction.filename || file.name;
  const preview = card.querySelector(".preview");
  preview.src = URL.createObjectURL(file);
  preview.alt = "Uploaded image " + (prediction.filename || file.name);
  const positives = new Set(prediction.positives || []);
  if (prediction.positives) {
    const line = card.querySelector(".positives");
    line.textContent = "Positives at the saved thresholds: " + (prediction.positives.join(", ") || "none");
    line.hidden = false;
  }
  renderClasses(card.querySelector(".classes"), prediction, positives);
  if (state.model && state.model.can_explain) {
    const select = card.querySelector(".explain-class");
    const byProbability = prediction.top_k.map((e) => e.label);
    const rest = state.model.classes.filter((c) => !byProbability.includes(c));
    for (const name of [...byProbability, ...rest]) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.append(option);
    }
    card.querySelector(".explain-controls").hidden = false;
    card.querySelector(".explain-button").addEventListener("click", () => showHeatMap(card, file));
    showHeatMap(card, file);
  }
  return card;
}

async function predict(files) {
  const images = Array.from(files);
  if (!images.length) return;
  const form = new FormData();
  for (const file of images) form.append("file", file, file.name);
  say("Predicting " + images.length + " image(s)…");
  try {
    const answer = await api("/v1/predict", { method: "POST", body: form });
    const results = $("results");
    results.replaceChildren();
    answer.predictions.forEach((prediction, i) => results.append(renderResult(images[i], prediction)));
    const first = answer.predictions[0].top_k[0];
    say(images.length + " image(s) predicted; first: " + first.label + " " + percent(first.probability));
  } catch (error) {
    say(error.message, true);
  }
}

function setUp() {
  $("files").addEventListener("change", (event) => predict(event.target.files));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    predict(event.dataTransfer.files);
  });
  $("api-key-save").addEventListener("click", () => {
    state.key = $("api-key").value;
    loadModel();
  });
  loadModel();
}

setUp();
