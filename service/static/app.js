// The demo page: draw or upload, POST /v1/predict, show class + confidence + abnormality gauge;
// "Run FGSM" POSTs /v1/perturb and shows both images scored side by side. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
let drawing = false;
let drawn = false;
let uploaded = null; // data URL of an uploaded file, sent as is
let last = null;
let colour = false; // the served model takes RGB input (from /v1/model's input_shape)

function resetCanvas() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  drawn = false;
  uploaded = null;
}

function pos(ev) {
  const r = canvas.getBoundingClientRect();
  return { x: (ev.clientX - r.left) * (canvas.width / r.width), y: (ev.clientY - r.top) * (canvas.height / r.height) };
}

function stroke(p) {
  ctx.strokeStyle = "#fff";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = Number($("brush").value);
  ctx.beginPath();
  ctx.moveTo(last.x, last.y);
  ctx.lineTo(p.x, p.y);
  ctx.stroke();
  last = p;
}

canvas.addEventListener("pointerdown", (ev) => {
  if (uploaded) resetCanvas();
  drawing = true;
  drawn = true;
  last = pos(ev);
  stroke({ x: last.x + 0.01, y: last.y });
  canvas.setPointerCapture(ev.pointerId);
});
canvas.addEventListener("pointermove", (ev) => { if (drawing) stroke(pos(ev)); });
const endStroke = () => { if (drawing) { drawing = false; predict(); } };
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

// The drawn digit, cropped to its bounding box and centred in a square with a 20% margin each side
// (MNIST digits sit in a 20x20 box inside 28x28), as a PNG data URL. The server resizes it.
function drawingAsPng() {
  const { width: w, height: h } = canvas;
  const px = ctx.getImageData(0, 0, w, h).data;
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (px[(y * w + x) * 4] > 20) { if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
    }
  }
  if (x1 < 0) return null;
  const side = Math.max(x1 - x0 + 1, y1 - y0 + 1);
  const full = Math.ceil(side * 1.4);
  const out = document.createElement("canvas");
  out.width = out.height = full;
  const o = out.getContext("2d");
  o.fillStyle = "#000";
  o.fillRect(0, 0, full, full);
  const dx = Math.round((full - (x1 - x0 + 1)) / 2), dy = Math.round((full - (y1 - y0 + 1)) / 2);
  o.drawImage(canvas, x0, y0, x1 - x0 + 1, y1 - y0 + 1, dx, dy, x1 - x0 + 1, y1 - y0 + 1);
  return out.toDataURL("image/png");
}

const askForInput = () =>
  say(colour ? "Upload a photo first (or draw on the canvas)." : "Draw a digit or upload an image first.");

function currentInput() {
  if (uploaded) return uploaded;
  if (!drawn) return null;
  return drawingAsPng();
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function post(path, body) {
  const res = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
  if (res.status === 401) $("key-row").classList.remove("hidden");
  if (!res.ok) throw new Error(data && data.error ? data.error : `HTTP ${res.status}`);
  return data;
}

function say(msg) { $("message").textContent = msg || ""; }
const pct = (v) => `${(100 * v).toFixed(1)}%`;

function paintGauge(bar, v, flagged) {
  bar.style.width = `${Math.max(2, 100 * v)}%`;
  bar.style.backgroundColor = flagged ? "var(--bad)" : v > 0.8 ? "var(--warn)" : "var(--ok)";
}

function showPrediction(p) {
  $("result").classList.remove("empty");
  $("result-class").textContent = p.label;
  $("result-confidence").textContent = pct(p.confidence);
  $("result-ll").textContent = p.log_likelihood.toFixed(2);
  $("result-thr").textContent = p.threshold.toFixed(2);
  $("abnormality-value").textContent = p.abnormality_score.toFixed(3);
  paintGauge($("abnormality-bar"), p.abnormality_score, p.is_adversarial);
  const flag = $("flag");
  flag.textContent = p.is_adversarial ? "flagged as adversarial / abnormal" : "looks like a clean input";
  flag.className = `flag ${p.is_adversarial ? "adversarial" : "clean"}`;
  $("result-topk").innerHTML = "";
  for (const t of p.top_k) {
    const li = document.createElement("li");
    li.textContent = `${t.label}: ${pct(t.probability)}`;
    $("result-topk").appendChild(li);
  }
}

function showSide(prefix, p, png) {
  $(`${prefix}-img`).src = `data:image/png;base64,${png}`;
  $(`${prefix}-class`).textContent = p.label;
  $(`${prefix}-conf`).textContent = `(${pct(p.confidence)})`;
  $(`${prefix}-abn`).textContent = p.abnormality_score.toFixed(3);
  paintGauge($(`${prefix}-bar`), p.abnormality_score, p.is_adversarial);
  const f = $(`${prefix}-flag`);
  f.textContent = p.is_adversarial ? "flagged" : "not flagged";
  f.className = p.is_adversarial ? "tag-bad" : "tag-ok";
}

async function busy(button, fn) {
  button.disabled = true;
  try { await fn(); } catch (e) { say(e.message); } finally { button.disabled = false; }
}

async function predict() {
  const input = currentInput();
  if (!input) { askForInput(); return; }
  await busy($("predict"), async () => {
    const data = await post("/v1/predict?top_k=3", { instances: [{ b64: input }] });
    say("");
    showPrediction(data.predictions[0]);
  });
}

async function fgsm() {
  const input = currentInput();
  if (!input) { askForInput(); return; }
  await busy($("fgsm"), async () => {
    const data = await post("/v1/perturb", { instance: { b64: input }, epsilon: Number($("eps").value) });
    say("");
    showPrediction(data.original);
    showSide("orig", data.original, data.original_png_b64);
    showSide("adv", data.perturbed, data.perturbed_png_b64);
  });
}

$("predict").addEventListener("click", predict);
$("fgsm").addEventListener("click", fgsm);
$("clear").addEventListener("click", () => { resetCanvas(); say(""); });
$("eps").addEventListener("input", () => {
  $("eps-value").textContent = Number($("eps").value).toFixed(colour ? 3 : 2);
});
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (!f) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      resetCanvas();
      const s = Math.min(canvas.width / img.width, canvas.height / img.height);
      const w = img.width * s, h = img.height * s;
      ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      uploaded = reader.result;
      predict();
    };
    img.onerror = () => say("The browser cannot read that file as an image.");
    img.src = reader.result;
  };
  reader.readAsDataURL(f);
  $("file").value = "";
});

async function loadModel() {
  try {
    const res = await fetch("/v1/model", { headers: headers() });
    if (res.status === 401) { $("key-row").classList.remove("hidden"); $("model-line").textContent = "enter the API key to use the model"; return; }
    const m = await res.json();
    if (!res.ok) { $("model-line").textContent = m.error || `HTTP ${res.status}`; return; }
    const acc = m.metrics && m.metrics.test_accuracy != null ? `, test accuracy ${pct(m.metrics.test_accuracy)}` : "";
    const fpr = m.detector && m.detector.target_fpr != null ? `, detector at ${pct(m.detector.target_fpr)} clean FPR` : "";
    $("model-line").textContent =
      `model ${m.name} ${m.version} (${m.dataset.name}, input ${m.input_shape.join("x")}${acc}${fpr})`;
    adaptToModel(m);
  } catch (e) {
    $("model-line").textContent = `cannot reach the server: ${e.message}`;
  }
}

// A colour model (CIFAR-10, photos): ask for a photo, name the classes the card lists, and start the FGSM slider
// at the usual colour budget of 8/255 instead of the digits' 0.2.
function adaptToModel(m) {
  const [c, h, w] = m.input_shape;
  colour = c === 3;
  $("classes-line").textContent = m.classes && m.classes.length ? `classes: ${m.classes.join(", ")}` : "";
  if (!colour) return;
  $("intro").textContent =
    `Upload a photo (any size: the server resizes it to ${w}x${h}, as /v1/predict does) or draw on the canvas.`;
  const eps = $("eps");
  eps.max = "0.1";
  eps.step = String(1 / 255);
  eps.value = String(8 / 255);
  $("eps-value").textContent = Number(eps.value).toFixed(3);
}

$("api-key").addEventListener("change", loadModel);
resetCanvas();
loadModel();
