// Live2D's page: one websocket, global state pushed by the server, settings staged locally and
// sent only with a Start button. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const page = {
  state: null, socket: null, cycle: null, follow: true, staged: {}, modalIndex: null,
  log: [], order: [],
};

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${location.search}`);
  page.socket = socket;
  socket.onopen = () => { $("connection").textContent = "connected"; };
  socket.onclose = () => {
    $("connection").textContent = "disconnected: reconnecting…";
    setTimeout(connect, 2000);
  };
  socket.onmessage = (event) => receive(JSON.parse(event.data));
}

function send(message) {
  if (!page.socket || page.socket.readyState !== WebSocket.OPEN) {
    showError("not connected to the server");
    return;
  }
  page.socket.send(JSON.stringify(message));
}

function receive(message) {
  if (message.type === "state") {
    if (message.log) page.log = message.log.slice(-1000);
    page.state = message;
    render();
  } else if (message.type === "log") {
    page.log.push(message.line);
    if (page.log.length > 1000) page.log.splice(0, page.log.length - 1000);
    renderLog();
  } else if (message.type === "progress") {
    renderProgress(message.progress);
  } else if (message.type === "error") {
    showError(message.message);
  } else if (message.type === "ok") {
    hideError();
  }
}

function showError(text) { $("error").textContent = text; $("error").hidden = false; }
function hideError() { $("error").hidden = true; }

// ------------------------------------------------------------------------------ left panel
function render() {
  const s = page.state;
  $("status").textContent = s.status;
  $("status").dataset.status = s.status;
  $("warp-dir").textContent = s.warp_dir || "none chosen yet";
  $("warp-root").textContent = s.warp_root;
  // What the folder lacks before particles can be imported (no previous.settings yet...).
  $("warp-missing").textContent = s.missing || "";
  $("warp-missing").hidden = !s.missing;
  for (const id of ["start-job", "start-automatic"]) $(id).disabled = !s.warp_dir;
  $("particles").textContent = `${s.particles.toLocaleString()} particles imported`;
  renderSettings();
  renderProgress(s.progress);
  renderCycles();
  renderLog();
}

function renderSettings() {
  const s = page.state;
  for (const level of ["user", "expert"]) {
    const form = $(`${level}-form`);
    const focused = document.activeElement && form.contains(document.activeElement);
    if (focused) continue;  // never redraw under the user's cursor
    form.replaceChildren();
    for (const spec of s.specs.filter((item) => item.level === level)) {
      form.append(settingInput(spec, s.settings[spec.name]));
    }
  }
  $("staged").hidden = Object.keys(page.staged).length === 0;
}

function settingInput(spec, current) {
  const label = document.createElement("label");
  // full_help: the help with its default and range (the tooltip wraps long text).
  label.title = spec.full_help || spec.help || "";
  const text = document.createElement("span");
  text.textContent = spec.label + (spec.unit ? ` (${spec.unit})` : "");
  let input;
  const value = spec.name in page.staged ? page.staged[spec.name] : current;
  if (spec.type === "choice") {
    input = document.createElement("select");
    for (const choice of spec.choices) {
      const option = new Option(page.state.job_types[choice] || choice, choice);
      input.append(option);
    }
    input.value = value;
  } else if (spec.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(value);
  } else {
    input = document.createElement("input");
    input.type = "number";
    input.step = spec.type === "int" ? "1" : "any";
    if (spec.min !== null) input.min = spec.min;
    if (spec.max !== null) input.max = spec.max;
    input.value = value === null || value === undefined ? "" : value;
    if (spec.optional) input.placeholder = "automatic";
  }
  input.name = spec.name;
  if (spec.name in page.staged) input.classList.add("changed");
  input.addEventListener("change", () => stage(spec, input));
  label.append(text, input);
  return label;
}

// The same rules as the server's Settings.from_dict: it checks again and has the last word.
function check(spec, input) {
  if (spec.type === "bool") return { value: input.checked };
  if (spec.type === "choice") return { value: input.value };
  if (input.value.trim() === "") {
    return spec.optional ? { value: null } : { error: `${spec.label} needs a value` };
  }
  const number = Number(input.value);
  if (!Number.isFinite(number)) return { error: `${spec.label} must be a number` };
  if (spec.type === "int" && !Number.isInteger(number)) {
    return { error: `${spec.label} must be a whole number` };
  }
  if ((spec.min !== null && number < spec.min) || (spec.max !== null && number > spec.max)) {
    return { error: `${spec.label} must be between ${spec.min} and ${spec.max}` };
  }
  return { value: number };
}

function stage(spec, input) {
  const result = check(spec, input);
  input.classList.toggle("invalid", Boolean(result.error));
  if (result.error) { showError(result.error); return; }
  hideError();
  if (result.value === page.state.settings[spec.name]) delete page.staged[spec.name];
  else page.staged[spec.name] = result.value;
  input.classList.toggle("changed", spec.name in page.staged);
  $("staged").hidden = Object.keys(page.staged).length === 0;
}

function start(command) {
  if (document.querySelector(".settings .invalid")) {
    showError("fix the settings marked in red first");
    return;
  }
  const message = { command, settings: { ...page.staged } };
  if (command === "start_job") {
    message.job_type = page.staged.mode || page.state.settings.mode;
  }
  send(message);
  page.staged = {};
}

function renderProgress(progress) {
  const box = $("progress");
  if (!progress) { box.hidden = true; return; }
  box.hidden = false;
  const percent = Math.round(100 * progress.fraction);
  $("progress-bar").style.width = `${percent}%`;
  const rate = progress.particles_per_second ? `${Math.round(progress.particles_per_second)} particles/s` : "";
  const eta = progress.eta_seconds !== null && progress.eta_seconds !== undefined
    ? `, about ${Math.ceil(progress.eta_seconds)} s left` : "";
  $("progress-text").textContent =
    `cycle ${progress.cycle}: ${progress.stage} ${percent}% ${rate}${eta}`;
}

// ------------------------------------------------------------------------------ classes
function history() { return page.state ? page.state.history : []; }

function renderCycles() {
  const cycles = history();
  const select = $("cycle-select");
  if (page.follow || page.cycle === null || page.cycle >= cycles.length) {
    page.cycle = cycles.length - 1;
  }
  select.replaceChildren(...cycles.map((c) => new Option(
    `cycle ${c.number} · ${page.state.job_types[c.job_type]} · ${c.high_res.toFixed(1)} Å`,
    String(c.number))));
  $("cycle-slider").max = String(Math.max(cycles.length - 1, 0));
  showCycle();
  renderPlot();
}

function setCycle(index) {
  const cycles = history();
  if (!cycles.length) return;
  page.cycle = Math.max(0, Math.min(cycles.length - 1, index));
  page.follow = page.cycle === cycles.length - 1;
  showCycle();
}

function showCycle() {
  const cycles = history();
  const gallery = $("gallery");
  if (page.cycle < 0 || !cycles.length) {
    gallery.replaceChildren();
    return;
  }
  const c = cycles[page.cycle];
  $("cycle-select").value = String(c.number);
  $("cycle-slider").value = String(page.cycle);
  const finished = new Date(c.finished * 1000).toLocaleString();
  $("cycle-meta").textContent =
    `Cycle ${c.number}: ${c.particles.toLocaleString()} particles (${Math.round(100 * c.fraction)}% used), ` +
    `${page.state.job_types[c.job_type]} job ${c.job}, ${c.block} cycle ${c.block_cycle} ` +
    `(${c.job_cycle} of ${c.job_cycles}), ${c.high_res.toFixed(1)} Å, ${c.engine}, finished ${finished}`;
  const links = [["class averages (MRC)", c.classes], ["star file", c.star]];
  $("downloads").replaceChildren(...links.map(([text, name]) => {
    const link = document.createElement("a");
    link.href = `/files/${name}`;
    link.textContent = text;
    link.download = name;
    return link;
  }));
  const counts = c.class_counts.length ? c.class_counts : [];
  page.order = counts.map((_, k) => k);
  if ($("sort-count").checked) page.order.sort((a, b) => counts[b] - counts[a] || a - b);
  gallery.replaceChildren(...page.order.map((k, position) => {
    const tile = document.createElement("button");
    tile.className = "tile";
    tile.type = "button";
    tile.dataset.classNumber = String(k + 1);
    const image = document.createElement("img");
    image.src = `/files/${c.thumbnails}/class_${String(k + 1).padStart(3, "0")}.png`;
    image.alt = `class ${k + 1}`;
    image.loading = "lazy";
    const caption = document.createElement("span");
    caption.className = "caption";
    const name = document.createElement("span");
    name.textContent = `class ${k + 1}`;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = counts[k].toLocaleString();
    caption.append(name, count);
    tile.append(image, caption);
    tile.addEventListener("click", () => openModal(position));
    return tile;
  }));
  if (page.modalIndex !== null) openModal(page.modalIndex);
}

function openModal(position) {
  const c = history()[page.cycle];
  if (!c || !page.order.length) return;
  page.modalIndex = (position + page.order.length) % page.order.length;
  const k = page.order[page.modalIndex];
  $("modal-image").src = `/files/${c.thumbnails}/class_${String(k + 1).padStart(3, "0")}.png`;
  $("modal-title").textContent =
    `Cycle ${c.number}, class ${k + 1}: ${c.class_counts[k].toLocaleString()} particles`;
  $("modal").hidden = false;
}

function closeModal() { page.modalIndex = null; $("modal").hidden = true; }

function renderPlot() {
  const svg = $("plot");
  const cycles = history().filter((c) => c.class_counts.some((n) => n > 0));
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (cycles.length < 1) return;
  const width = 600, height = 220, left = 40, right = 40, top = 24, bottom = 25;
  const largest = Math.max(1, ...cycles.flatMap((c) => c.class_counts));
  const x = (i) => left + (cycles.length === 1 ? 0.5 : i / (cycles.length - 1)) * (width - left - right);
  const y = (n) => top + (1 - n / largest) * (height - top - bottom);
  const classes = Math.max(...cycles.map((c) => c.class_counts.length));
  for (let k = 0; k < classes; k++) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", cycles.map((c, i) => `${x(i)},${y(c.class_counts[k] || 0)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", `hsl(${(k * 137.5) % 360} 65% 45%)`);
    line.setAttribute("stroke-width", "1.5");
    line.dataset.classNumber = String(k + 1);
    svg.append(line);
  }
  const finest = Math.min(...cycles.map((c) => c.high_res)), coarsest = Math.max(...cycles.map((c) => c.high_res));
  const resolution = document.createElementNS(ns, "polyline");
  const ry = (r) => top + (coarsest === finest ? 0.5 : (r - finest) / (coarsest - finest)) * (height - top - bottom);
  resolution.setAttribute("points", cycles.map((c, i) => `${x(i)},${ry(c.high_res)}`).join(" "));
  resolution.setAttribute("fill", "none");
  resolution.setAttribute("stroke", "#101828");
  resolution.setAttribute("stroke-dasharray", "4 3");
  svg.append(resolution);
  const labels = [[4, 14, `${largest} particles`, "start"],
    [4, height - 8, `cycle ${cycles[0].number}`, "start"],
    [width - 4, height - 8, `cycle ${cycles[cycles.length - 1].number}`, "end"],
    [width - 4, 14, `- - resolution limit ${finest.toFixed(0)}–${coarsest.toFixed(0)} Å`, "end"]];
  for (const [lx, ly, text, anchor] of labels) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", lx);
    label.setAttribute("y", ly);
    label.setAttribute("text-anchor", anchor);
    label.setAttribute("font-size", "11");
    label.textContent = text;
    svg.append(label);
  }
}

function renderLog() {
  const box = $("log");
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.textContent = page.log.join("\n");
  if (atBottom) box.scrollTop = box.scrollHeight;
}

// ------------------------------------------------------------------------------ wiring
function showTab(name) {
  $("classes-view").hidden = name !== "classes";
  $("log").hidden = name !== "log";
  $("tab-classes").classList.toggle("active", name === "classes");
  $("tab-log").classList.toggle("active", name === "log");
  if (name === "log") $("log").scrollTop = $("log").scrollHeight;
}

document.addEventListener("DOMContentLoaded", () => {
  $("start-job").addEventListener("click", () => start("start_job"));
  $("start-automatic").addEventListener("click", () => start("start_automatic"));
  $("stop").addEventListener("click", () => send({ command: "stop" }));
  $("tab-classes").addEventListener("click", () => showTab("classes"));
  $("tab-log").addEventListener("click", () => showTab("log"));
  $("cycle-prev").addEventListener("click", () => setCycle(page.cycle - 1));
  $("cycle-next").addEventListener("click", () => setCycle(page.cycle + 1));
  $("cycle-select").addEventListener("change", (e) => setCycle(
    history().findIndex((c) => String(c.number) === e.target.value)));
  $("cycle-slider").addEventListener("input", (e) => setCycle(Number(e.target.value)));
  $("sort-count").addEventListener("change", showCycle);
  $("modal-close").addEventListener("click", closeModal);
  $("modal").addEventListener("click", (e) => { if (e.target === $("modal")) closeModal(); });
  $("change-warp").addEventListener("click", () => {
    const s = page.state;
    $("warp-input").value = !s ? "" : s.warp_dir || `${s.warp_root.replace(/\/$/, "")}/`;
    $("warp-dialog").hidden = false;
    $("warp-input").focus();
  });
  $("warp-cancel").addEventListener("click", () => { $("warp-dialog").hidden = true; });
  $("warp-form").addEventListener("submit", (e) => {
    e.preventDefault();
    send({ command: "set_warp_dir", path: $("warp-input").value });
    $("warp-dialog").hidden = true;
  });
  document.addEventListener("keydown", (e) => {
    if ($("modal").hidden) return;
    if (e.key === "ArrowRight") openModal(page.modalIndex + 1);
    else if (e.key === "ArrowLeft") openModal(page.modalIndex - 1);
    else if (e.key === "Escape") closeModal();
  });
  connect();
});
