// Live2D's page: one websocket, global state pushed by the server, settings staged locally and
// sent only with a Start button. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const page = {
  state: null, socket: null, cycle: null, follow: true, staged: {}, modalIndex: null,
  log: [], order: [],
  tables: {}, tablesFor: null, fetching: new Set(),  // class tables by cycle number
  exporting: false,
  square: null,  // the grid square whose foil holes are listed
  mapShown: undefined,  // the grid map the tiles show
};

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${location.search}`);
  page.socket = socket;
  socket.onopen = () => { $("connection").textContent = "connected"; };
  socket.onclose = () => {
    $("connection").textContent = "disconnected: reconnecting…";
    // Until the server answers again, what it is doing is unknown: no stale "running".
    $("status").textContent = "connecting…";
    $("status").dataset.status = "connecting";
    if (page.exporting) exportDone("");
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
    if (message.output_dir !== page.tablesFor) {  // another folder: its own cycle numbers
      page.tables = {};
      page.tablesFor = message.output_dir;
    }
    Object.assign(page.tables, message.class_tables || {});
    page.state = message;
    render();
  } else if (message.type === "update") {
    if (!page.state) return;  // the whole state comes first; an update before it is stale
    Object.assign(page.tables, message.class_tables || {});
    page.state = mergeUpdate(page.state, message);
    render();
  } else if (message.type === "cycle") {
    if (page.state) addCycle(page.state.history, message.cycle, message.thinned);
  } else if (message.type === "log") {
    page.log.push(message.line);
    if (page.log.length > 1000) page.log.splice(0, page.log.length - 1000);
    renderLog();
  } else if (message.type === "progress") {
    renderProgress(message.progress);
  } else if (message.type === "import") {
    if (page.state) page.state.particles = message.particles;
    $("particles").textContent = `${message.particles.toLocaleString()} particles imported`;
    if (page.state) renderLatencyPlot();  // the latest update's backlog grows with the imports
  } else if (message.type === "disk") {
    if (page.state) page.state.disk = message.disk;
    renderDisk(message.disk);
  } else if (message.type === "error") {
    showError(message.message);
    if (page.exporting) exportDone(message.message);
  } else if (message.type === "ok") {
    hideError();
  } else if (message.type === "notify") {
    if (page.state) page.state.notify = message.notify;
    renderNotify(message.notify);
  } else if (message.type === "notify_test") {
    hideError();
    $("notify-status").textContent = message.message;
    $("notify-status").classList.toggle("warning", !message.ok);
  } else if (message.type === "epu_saved") {  // this page's edit: what the folder holds
    hideError();
    $("epu-status").textContent = message.message;
  } else if (message.type === "exported") {
    hideError();
    exportDone(`${message.message}.`);
  }
}

// An update carries everything but the cycle history, and of the good-particle history only
// the latest point: the page keeps the rest, so messages do not grow with the session.
function mergeUpdate(state, update) {
  const merged = { ...state, ...update, type: "state", history: state.history };
  if (update.selection && state.selection) {
    const points = state.selection.history.slice();
    for (const point of update.selection.history) {
      const at = points.findIndex((p) => p.cycle === point.cycle);
      if (at >= 0) points[at] = point; else points.push(point);
    }
    merged.selection = { ...update.selection, history: points };
  }
  return merged;
}

// With the cycles whose averages it thinned (older streaming updates: the server says so).
function addCycle(cycles, record, thinned) {
  const at = cycles.findIndex((c) => c.number === record.number);
  if (at >= 0) cycles[at] = record; else cycles.push(record);
  const gone = new Set(thinned || []);
  if (gone.size) for (const c of cycles) if (gone.has(c.number)) c.averages_kept = false;
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
  // Another process classifies into the folder: this page only watches (the server refuses
  // anything that would change the session, saying the same).
  $("read-only").textContent = s.read_only || "";
  $("read-only").hidden = !s.read_only;
  for (const id of ["start-job", "start-automatic"]) $(id).disabled = !s.warp_dir || !!s.read_only;
  $("particles").textContent = `${s.particles.toLocaleString()} particles imported`;
  renderDisk(s.disk);
  renderAlerts(s.alerts, Boolean(s.read_only));
  renderGridMap(s.grid_map);
  if ("forecast" in s) renderForecast(s.forecast);  // sent with the state and after a cycle
  renderNotify(s.notify);
  renderEpu(s);
  renderSettings();
  renderProgress(s.progress);
  renderCycles();
  renderSelection();
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
  renderGoodPlot();
  renderLatencyPlot();
}

function setCycle(index) {
  const cycles = history();
  if (!cycles.length) return;
  page.cycle = Math.max(0, Math.min(cycles.length - 1, index));
  page.follow = page.cycle === cycles.length - 1;
  showCycle();
}


// A streaming update (job type stream): what it took in, and how many particles wait for the
// next one (imported, not yet in the classes).
function streamingWords(c) {
  const waiting = Math.max(0, (page.state.particles || 0) - c.particles);
  return `Streaming update, cycle ${c.number}: ${c.new_particles.toLocaleString()} new and ` +
    `${c.revisited.toLocaleString()} re-visited particles classified; ` +
    `${c.class_counts.reduce((a, b) => a + b, 0).toLocaleString()} particles in the classes, ` +
    `${waiting.toLocaleString()} waiting for the next update` +
    (c.latency && c.latency.length ? `; the new ones waited ${waited(c.latency[0])} (median), ` +
      `at most ${waited(c.latency[2])}, from their stack being written` : "");
}

function waited(seconds) {
  return seconds >= 60 ? `${(seconds / 60).toFixed(1)} min` : `${Math.round(seconds)} s`;
}

function showCycle() {
  const cycles = history();
  const gallery = $("gallery");
  if (page.cycle < 0 || !cycles.length) {
    gallery.replaceChildren();
    $("cycle-meta").textContent = "No classes yet: they appear here after the first cycle.";
    return;
  }
  const c = cycles[page.cycle];
  $("cycle-select").value = String(c.number);
  $("cycle-slider").value = String(page.cycle);
  const finished = new Date(c.finished * 1000).toLocaleString();
  $("cycle-meta").textContent =
    (c.batches ? streamingWords(c) :
      `Cycle ${c.number}: ${c.particles.toLocaleString()} particles (${Math.round(100 * c.fraction)}% used), ` +
      `${page.state.job_types[c.job_type]} job ${c.job}, ${c.block} cycle ${c.block_cycle} ` +
      `(${c.job_cycle} of ${c.job_cycles})`) +
    `, ${c.high_res.toFixed(1)} Å, ${c.engine}, finished ${finished}` +
    (c.left_out ? `. ${c.left_out.toLocaleString()} particles were left out: their source stacks ` +
      "changed or vanished since import (see the log)" : "") + thinnedWords(c);
  // A streaming update keeps its particles' parameters per batch: the server makes its star.
  const star = c.star || `cycle_${String(c.number).padStart(3, "0")}.star`;
  const links = [["class averages (MRC)", c.classes], ["star file", star]]
    .filter(([, name]) => name !== c.classes || c.averages_kept !== false);
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
  needTable(c);
  // The same cycle in the same order keeps its tiles (no images reloaded): only what they
  // say changes, e.g. a mark made on another page.
  const key = `${page.tablesFor}|${c.number}|${c.thumbnails}|${c.averages_kept}|` +
    page.order.join(",");
  if (gallery.dataset.key !== key) {
    gallery.replaceChildren(...page.order.map((k, position) => makeTile(c, k, position)));
    gallery.dataset.key = key;
  }
  for (const tile of gallery.children) fillTile(tile, c, Number(tile.dataset.classNumber) - 1);
  if (page.modalIndex !== null) openModal(page.modalIndex);
}

// An older streaming update whose class averages were thinned (CycleHistory.thin_averages):
// no images; the nearest cycle that has them.
function thinnedWords(c) {
  if (c.averages_kept !== false) return "";
  let nearest = null;
  for (const r of history()) {
    if (r.averages_kept === false) continue;
    const d = Math.abs(r.number - c.number);
    if (!nearest || d <= Math.abs(nearest.number - c.number)) nearest = r;
  }
  return ". The class averages of this streaming update were thinned to save disk (beyond " +
    "the latest cycles, one update an hour keeps them)" +
    (nearest ? `; nearest kept: cycle ${nearest.number}` : "");
}

function thumbnail(c, k) {
  return `/files/${c.thumbnails}/class_${String(k + 1).padStart(3, "0")}.png`;
}

function makeTile(c, k, position) {
  const tile = document.createElement("div");
  tile.className = "tile";
  tile.dataset.classNumber = String(k + 1);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "tile-image";
  open.title = "full size";
  const image = document.createElement("img");
  if (c.averages_kept !== false) image.src = thumbnail(c, k);
  image.alt = `class ${k + 1}`;
  image.loading = "lazy";
  open.append(image);
  open.addEventListener("click", () => openModal(position));
  const caption = document.createElement("span");
  caption.className = "caption";
  const name = document.createElement("span");
  name.textContent = `class ${k + 1}`;
  const count = document.createElement("span");
  count.className = "count";
  caption.append(name, count);
  const quality = document.createElement("span");
  quality.className = "quality";
  const resolution = document.createElement("span");
  resolution.className = "resolution";
  const score = document.createElement("span");
  score.className = "score";
  quality.append(resolution, score);
  const reason = document.createElement("span");
  reason.className = "reason";
  const kept = document.createElement("span");
  kept.className = "kept";
  tile.append(open, caption, quality, reason, kept, markButtons(() => k));
  return tile;
}

function fillTile(tile, c, k) {
  tile.querySelector(".count").textContent = c.class_counts[k].toLocaleString();
  const q = classQuality(c, k);
  const quality = tile.querySelector(".quality");
  const reason = tile.querySelector(".reason");
  const marks = tile.querySelector(".mark");
  const kept = tile.querySelector(".kept");
  const curated = keptBy(c, k);
  kept.hidden = !curated;
  kept.textContent = curated ? `${curated.kept.toLocaleString()} of ` +
    `${curated.particles.toLocaleString()} kept` : "";
  kept.title = curated ? curated.rule : "";
  quality.hidden = reason.hidden = marks.hidden = !q;
  if (!q) { delete tile.dataset.selected; return; }
  tile.querySelector(".resolution").textContent = q.resolution;
  tile.querySelector(".score").textContent = q.score;
  reason.textContent = q.reason;
  quality.title = reason.title = q.reason;
  tile.dataset.selected = String(markState(c, k).selected);
  fillMarks(marks, c, k);
}

// ------------------------------------------------------------------------------ class quality
// Each cycle's record has the resolutions and scores; its class table (cycle_NNN_classes.json)
// adds the reasons and whether the estimate reached the box's limit. The server sends the
// latest cycle's; earlier ones are fetched once when shown.
function needTable(c) {
  if (!c.class_table || c.number in page.tables || page.fetching.has(c.number)) return;
  const folder = page.tablesFor;
  page.fetching.add(c.number);
  fetch(`/files/${c.class_table}`, { credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : null))
    .catch(() => null)
    .then((table) => {
      page.fetching.delete(c.number);
      if (folder !== page.tablesFor) return;
      page.tables[c.number] = Array.isArray(table) ? table : null;  // null: the record only
      const shown = history()[page.cycle];
      if (shown && shown.number === c.number) showCycle();
    });
}

function formatResolution(resolution, atLimit) {
  if (resolution === null || resolution === undefined) return "no estimate";
  return `${atLimit ? "≤ " : ""}${resolution.toFixed(1)} Å`;
}

function classQuality(c, k) {
  const scores = c.class_score || [];
  if (scores[k] === undefined) return null;  // the start cycle, or a session from before
  const table = page.tables[c.number];
  const row = table ? table.find((r) => r.number === k + 1) : null;
  const resolution = row ? row.resolution : (c.class_resolution || [])[k];
  return {
    resolution: formatResolution(resolution, row ? row.at_limit : false),
    score: `score ${(row ? row.score : scores[k]).toFixed(2)}`,
    reason: row ? row.reason : "",
  };
}

// ------------------------------------------------------------------------------ selection
// The particle curation of the selection's cycle, on its selected classes (junk classes go
// whole): how many of the class's particles it keeps; null where not known (yet).
function keptBy(c, k) {
  const selection = page.state.selection;
  if (!selection || !selection.curation || selection.cycle !== c.number) return null;
  if (!selection.classes.includes(k + 1)) return null;
  return selection.curation[String(k + 1)] || null;
}

// The session's selection (the proposal with the marks over it) is for its latest scored
// cycle; earlier cycles show what their scores proposed, without marks.
function markState(c, k) {
  const selection = page.state.selection;
  const number = k + 1;
  if (selection && selection.cycle === c.number) {
    return {
      mark: selection.marks[String(number)] || null,
      proposed: selection.proposed.includes(number),
      learned: ((selection.learned || {}).changed || []).includes(number),
      selected: selection.classes.includes(number),
      editable: true,
    };
  }
  const proposed = (c.class_score || [])[k] >= page.state.good_score;
  return { mark: null, proposed, selected: proposed, editable: false };
}

function markButtons(classIndex) {
  const box = document.createElement("span");
  box.className = "mark";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", "mark this class");
  for (const [value, text] of [["good", "✓ good"], ["junk", "✗ junk"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.mark = value;
    button.textContent = text;
    button.addEventListener("click", () => toggleMark(classIndex(), value));
    box.append(button);
  }
  return box;
}

function fillMarks(box, c, k) {
  const m = markState(c, k);
  const latest = page.state.selection ? page.state.selection.cycle : null;
  box.classList.toggle("learned", Boolean(m.learned) && !m.mark);
  for (const button of box.querySelectorAll("button")) {
    const value = button.dataset.mark;
    const marked = m.mark === value;
    const proposed = !m.mark && (value === "good") === m.proposed;
    button.classList.toggle("marked", marked);
    button.classList.toggle("proposed", proposed);
    button.setAttribute("aria-pressed", String(marked));
    button.disabled = !m.editable;
    if (!m.editable) {
      button.title = `marks are made on the latest cycle (${latest})`;
    } else if (marked) {
      button.title = `marked ${value}: click to go back to the proposal ` +
        `(${m.proposed ? "good" : "junk"})`;
    } else {
      button.title = `mark class ${k + 1} ${value}` +
        (proposed ? " (proposed already: a mark keeps it so in later cycles)" : "") +
        (proposed && m.learned ? "; proposed by the rule learned from your marks, " +
          "not by its score" : "");
    }
  }
}

function toggleMark(k, value) {
  const c = history()[page.cycle];
  const selection = page.state && page.state.selection;
  if (!c || !selection || selection.cycle !== c.number) return;
  const current = selection.marks[String(k + 1)] || null;
  send({ command: "mark", cycle: c.number,
    classes: { [String(k + 1)]: current === value ? null : value } });
}

function renderSelection() {
  const selection = page.state.selection;
  $("selection").hidden = !selection || selection.cycle === null;
  if ($("selection").hidden) return;
  const c = history().find((r) => r.number === selection.cycle);
  const classified = c ? c.class_counts.reduce((a, b) => a + b, 0) : 0;
  const n = selection.classes.length;
  $("selected-particles").textContent = selection.particles.toLocaleString();
  $("selected-classes").textContent =
    `${n} class${n === 1 ? "" : "es"}` + (n ? ` (${selection.classes.join(", ")})` : "");
  const curated = selection.kept !== null && selection.kept !== undefined;
  $("selection-kept").hidden = !curated;
  $("selection-kept").textContent = curated
    ? `· ${selection.kept.toLocaleString()} good as the particle curation keeps them` : "";
  const marked = Object.keys(selection.marks).length;
  const learned = selection.learned || { examples: 0, changed: [] };
  const rule = learned.examples ? `the rule learned from ${learned.examples} ` +
    `mark${learned.examples === 1 ? "" : "s"}` : `score ${page.state.good_score} or more`;
  $("selection-detail").textContent =
    `of ${classified.toLocaleString()} in cycle ${selection.cycle}'s classes · ` +
    (marked ? `${marked} marked by hand, the rest as proposed (${rule})`
      : `as proposed (${rule})`);
  const moves = [];
  if (learned.examples) {
    const n = learned.changed.length;
    const which = n ? ` (class${n === 1 ? "" : "es"} ${learned.changed.join(", ")}, dotted)` : "";
    moves.push(`The proposal learns from your marks: ${n} proposal${n === 1 ? "" : "s"} of ` +
      `unmarked classes changed from what the scores say${which}.`);
  }
  if (selection.carried.length) {
    moves.push("After the ab initio restart, marks moved to the most similar new classes: " +
      selection.carried.map(([from, to]) => `class ${from} → ${to}`).join(", ") + ".");
  }
  if (selection.dropped.length) {
    moves.push(`Marks dropped (no similar new class, or the class was emptied and re-seeded): ` +
      selection.dropped.map((k) => `class ${k}`).join(", ") + ".");
  }
  $("selection-moves").textContent = moves.join(" ");
  $("selection-moves").hidden = !moves.length;
  $("export").disabled = page.exporting;
  const last = selection.exports[selection.exports.length - 1];
  $("export-last").hidden = !last;
  if (last) {
    const link = $("export-link");
    const name = last.file.split("/").pop();
    if (last.download) {
      link.href = `/files/${last.download}`;
      link.download = name;
      link.removeAttribute("aria-disabled");
    } else {  // written elsewhere (live2d export --to): not the server's to serve
      link.removeAttribute("href");
      link.setAttribute("aria-disabled", "true");
    }
    link.textContent = last.download ? name : last.file;
    const when = new Date(last.time * 1000).toLocaleTimeString();
    $("export-what").textContent = `(${last.particles.toLocaleString()} particles of classes ` +
      `${last.classes.join(", ")}, cycle ${last.cycle}, ${when})`;
  }
}

function exportSelected() {
  if (page.exporting) return;
  page.exporting = true;
  $("export").disabled = true;
  $("export-status").textContent = "writing the star file…";
  send({ command: "export" });
  if (!page.socket || page.socket.readyState !== WebSocket.OPEN) exportDone("");
}

function exportDone(text) {
  page.exporting = false;
  $("export").disabled = false;
  $("export-status").textContent = text;
}

function openModal(position) {
  const c = history()[page.cycle];
  if (!c || !page.order.length) return;
  page.modalIndex = (position + page.order.length) % page.order.length;
  const k = page.order[page.modalIndex];
  const src = c.averages_kept === false ? "" : thumbnail(c, k);
  if ($("modal-image").getAttribute("src") !== src) $("modal-image").src = src;
  $("modal-title").textContent =
    `Cycle ${c.number}, class ${k + 1}: ${c.class_counts[k].toLocaleString()} particles`;
  const q = classQuality(c, k);
  $("modal-quality").hidden = $("modal-mark").hidden = !q;
  if (q) {
    $("modal-quality").textContent =
      `${q.resolution} · ${q.score}` + (q.reason ? ` · ${q.reason}` : "");
    fillMarks($("modal-mark"), c, k);
  }
  $("modal").hidden = false;
}

function modalClass() { return page.modalIndex === null ? null : page.order[page.modalIndex]; }

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

// Particles in the selected classes against particles imported, cycle by cycle: enough yet?
// Labels of a plot: [x, y, text, text-anchor, colour] each, in 11-px type.
function drawLabels(svg, labels) {
  const ns = "http://www.w3.org/2000/svg";
  for (const [lx, ly, text, anchor, colour] of labels) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", lx);
    label.setAttribute("y", ly);
    label.setAttribute("text-anchor", anchor);
    label.setAttribute("font-size", "11");
    label.setAttribute("fill", colour);
    label.textContent = text;
    svg.append(label);
  }
}

function renderGoodPlot() {
  const svg = $("good-plot");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const selection = page.state.selection;
  const points = selection ? selection.history : [];
  if (!points.length) return;
  const width = 600, height = 220, left = 40, right = 40, top = 24, bottom = 25;
  const largest = Math.max(1, ...points.map((p) => p.imported));
  const x = (i) => left + (points.length === 1 ? 0.5 : i / (points.length - 1)) * (width - left - right);
  const y = (n) => top + (1 - n / largest) * (height - top - bottom);
  const series = [["imported", "#98a2b3"], ["good", "#027a48"]];
  for (const [name, colour] of series) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p, i) => `${x(i)},${y(p[name])}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "2");
    line.dataset.series = name;
    svg.append(line);
    const end = document.createElementNS(ns, "circle");  // the latest cycle (or the only one)
    end.setAttribute("cx", x(points.length - 1));
    end.setAttribute("cy", y(points[points.length - 1][name]));
    end.setAttribute("r", "3");
    end.setAttribute("fill", colour);
    svg.append(end);
  }
  const last = points[points.length - 1];
  const labels = [[4, 14, `${largest.toLocaleString()} particles`, "start", "#1d2430"],
    [4, height - 8, `cycle ${points[0].cycle}`, "start", "#1d2430"],
    [width - 4, height - 8, `cycle ${last.cycle}`, "end", "#1d2430"],
    [width - 4, 14, `— imported ${last.imported.toLocaleString()}`, "end", "#667085"],
    [width - 150, 14, `— good ${last.good.toLocaleString()}`, "end", "#027a48"]];
  drawLabels(svg, labels);
}

// Whether the classes keep up with the microscope, one point per streaming update: how long
// its new particles waited from their stack being written to being in the published classes
// (median and longest, its record's latency), and the backlog it left: particles imported by
// the next cycle's start (by now, for the latest) and not in its classes, as `live2d status`
// counts it (live2d.streaming.KeepingUp). Sessions that do not stream show no such plot.
function renderLatencyPlot() {
  const svg = $("latency-plot");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const all = history();
  const updates = [];
  all.forEach((c, i) => {
    if (!c.batches) return;
    const imported = i + 1 < all.length ? all[i + 1].particles : page.state.particles || 0;
    const inClasses = c.class_counts.reduce((a, b) => a + b, 0);
    const [p50, p99, longest] = c.latency && c.latency.length ? c.latency : [null, null, null];
    updates.push({ c, p50, p99, longest, backlog: Math.max(0, imported - inClasses) });
  });
  $("keeping-up").hidden = !updates.length;
  renderKeepingUp(updates.length ? page.state.keeping_up : null);
  if (!updates.length) return;
  const width = 600, height = 220, left = 40, right = 40, top = 24, bottom = 25;
  const TEN_MINUTES = 600;
  const slowest = Math.max(1, ...updates.map((u) => u.longest || 0));
  const most = Math.max(1, ...updates.map((u) => u.backlog));
  const x = (i) => left + (updates.length === 1 ? 0.5 : i / (updates.length - 1)) * (width - left - right);
  const y = (seconds) => top + (1 - seconds / slowest) * (height - top - bottom);
  const by = (n) => top + (1 - n / most) * (height - top - bottom);
  const barWidth = Math.max(2, Math.min(16, (width - left - right) / updates.length / 2));
  for (const [i, u] of updates.entries()) {  // the backlog: bars behind the latency
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", x(i) - barWidth / 2);
    bar.setAttribute("y", by(u.backlog));
    bar.setAttribute("width", barWidth);
    bar.setAttribute("height", height - bottom - by(u.backlog));
    bar.setAttribute("fill", "#d0d5dd");
    bar.dataset.series = "backlog";
    svg.append(bar);
  }
  if (slowest >= TEN_MINUTES) {  // a wait past ten minutes: the classes lag the microscope
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", left);
    line.setAttribute("x2", width - right);
    line.setAttribute("y1", y(TEN_MINUTES));
    line.setAttribute("y2", y(TEN_MINUTES));
    line.setAttribute("stroke", "#b42318");
    line.setAttribute("stroke-dasharray", "4 3");
    line.dataset.series = "ten-minutes";
    svg.append(line);
  }
  const timed = updates.map((u, i) => [u, i]).filter(([u]) => u.longest !== null);
  for (const [name, colour] of [["p50", "#175cd3"], ["longest", "#b42318"]]) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", timed.map(([u, i]) => `${x(i)},${y(u[name])}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "2");
    line.dataset.series = name;
    svg.append(line);
  }
  for (const [i, u] of updates.entries()) {  // one point per update, its figures on hover
    const point = document.createElementNS(ns, "g");
    point.classList.add("update");
    point.dataset.cycle = String(u.c.number);
    point.dataset.backlog = String(u.backlog);
    const title = document.createElementNS(ns, "title");
    title.textContent = `cycle ${u.c.number}, ${new Date(u.c.finished * 1000).toLocaleTimeString()}: ` +
      `${u.c.new_particles.toLocaleString()} new particles` +
      (u.longest === null ? ", their wait unknown" :
        `, waited ${waited(u.p50)} (median), ${waited(u.p99)} (p99), at most ${waited(u.longest)}`) +
      `; ${u.backlog.toLocaleString()} waiting after it`;
    point.append(title);
    if (u.longest !== null) {
      Object.assign(point.dataset, { p50: String(u.p50), p99: String(u.p99), longest: String(u.longest) });
      for (const [name, colour] of [["p50", "#175cd3"], ["longest", "#b42318"]]) {
        const dot = document.createElementNS(ns, "circle");
        dot.setAttribute("cx", x(i));
        dot.setAttribute("cy", y(u[name]));
        dot.setAttribute("r", "3.5");
        dot.setAttribute("fill", colour);
        point.append(dot);
      }
    }
    svg.append(point);
  }
  const last = updates[updates.length - 1];
  const labels = [[4, 14, `${waited(slowest)} wait`, "start", "#1d2430"],
    [4, height - 8, `cycle ${updates[0].c.number}`, "start", "#1d2430"],
    [width - 4, height - 8, `cycle ${last.c.number}`, "end", "#1d2430"],
    [width - 4, 14, `▮ waiting (up to ${most.toLocaleString()})`, "end", "#667085"],
    [width - 170, 14, "— longest", "end", "#b42318"],
    [width - 240, 14, "— median wait", "end", "#175cd3"]];
  if (slowest >= TEN_MINUTES) labels.push([left + 4, y(TEN_MINUTES) - 4, "10 min", "start", "#b42318"]);
  drawLabels(svg, labels);
}

// Beside the plot, the session's figures as `live2d status` gives them (the server measures
// them once per streaming update: live2d.streaming.KeepingUp): the latency over the last hour
// and how long before the latest update the least recently aligned particles were classified.
// A line whose figure is unknown (no stack times, no kept batches) is left out.
function renderKeepingUp(k) {
  const hour = $("keeping-up-hour"), aligned = $("keeping-up-aligned");
  hour.hidden = !k || k.p50 === null;
  hour.textContent = hour.hidden ? "" :
    `Over the last hour, stack written to particles in the classes: p50 ${waited(k.p50)}, ` +
    `p99 ${waited(k.p99)}` + (k.latest_latency === null ? "" :
      `; the latest update's new particles at most ${waited(k.latest_latency)}`);
  aligned.hidden = !k || k.oldest_alignment === null;
  aligned.textContent = aligned.hidden ? "" : "Least recently aligned particles: classified " +
    `${waited(k.oldest_alignment)} before the latest update (cycle ${k.cycle})`;
  Object.assign(hour.dataset, { p50: hour.hidden ? "" : String(k.p50),
    p99: hour.hidden ? "" : String(k.p99) });
  aligned.dataset.seconds = aligned.hidden ? "" : String(k.oldest_alignment);
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
  for (const button of $("modal-mark").querySelectorAll("button")) {
    button.addEventListener("click", () => {
      if (modalClass() !== null) toggleMark(modalClass(), button.dataset.mark);
    });
  }
  $("export").addEventListener("click", exportSelected);
  $("modal").addEventListener("click", (e) => { if (e.target === $("modal")) closeModal(); });
  $("change-warp").addEventListener("click", () => {
    const s = page.state;
    $("warp-input").value = !s ? "" : s.warp_dir || `${s.warp_root.replace(/\/$/, "")}/`;
    $("warp-dialog").hidden = false;
    $("warp-input").focus();
  });
  $("warp-cancel").addEventListener("click", () => { $("warp-dialog").hidden = true; });
  $("smtp-input").addEventListener("input", () => { $("smtp-input").dataset.edited = "1"; });
  $("notify-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const targets = $("notify-input").value.split("\n").map((line) => line.trim())
      .filter((line) => line);
    delete $("smtp-input").dataset.edited;
    send({ command: "set_notify", notify: targets, smtp: $("smtp-input").value });
  });
  $("notify-test").addEventListener("click", () => {
    $("notify-status").textContent = "sending a test to each target…";
    $("notify-status").classList.remove("warning");
    send({ command: "test_notify" });
  });
  $("epu-input").addEventListener("input", () => { $("epu-input").dataset.edited = "1"; });
  $("epu-form").addEventListener("submit", (e) => {
    e.preventDefault();
    delete $("epu-input").dataset.edited;
    send({ command: "set_epu_dir", path: $("epu-input").value.trim() });
  });
  $("epu-clear").addEventListener("click", () => {
    $("epu-input").value = "";
    delete $("epu-input").dataset.edited;
    send({ command: "set_epu_dir", path: "" });
  });
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
    else if ((e.key === "g" || e.key === "j") && !$("modal-mark").hidden &&
             !$("modal-mark").querySelector("button").disabled) {
      toggleMark(modalClass(), e.key === "g" ? "good" : "junk");
    }
  });
  connect();
});

// The output folder's disk use and free space; a warning before the disk fills.
function renderDisk(disk) {
  const line = $("disk");
  line.textContent = disk ? `Disk: ${disk.text}` : "";
  line.classList.toggle("warning", Boolean(disk && disk.low));
}

// Where alerts are sent (webhooks by host only); the mail server unless being edited.
function renderNotify(notify) {
  $("notify-settings").hidden = !notify;  // no folder chosen yet: no session to keep them
  if (!notify) return;
  $("notify-now").textContent = notify.targets.length ? notify.targets.join(", ") : "no one";
  if (!$("smtp-input").dataset.edited) $("smtp-input").value = notify.smtp;
}

// The session's EPU folder (every page follows an edit); the field unless being edited. A page
// watching read-only shows the writer's folder but cannot change it.
function renderEpu(s) {
  $("epu-settings").hidden = !s.warp_dir;  // no folder chosen yet: no session to keep it
  $("epu-now").textContent = s.epu_dir || "none (the movie paths only)";
  if (!$("epu-input").dataset.edited) $("epu-input").value = s.epu_dir || "";
  for (const id of ["epu-save", "epu-clear", "epu-input"]) $(id).disabled = Boolean(s.read_only);
}

// ------------------------------------------------------------------------------ alerts
// One banner per alert key, kept while the alert is in force and not dismissed: every update
// carries the alerts in force, so a banner goes when its alert clears, on every page.
function renderAlerts(alerts, readOnly) {
  const box = $("alerts");
  const shown = (alerts || []).filter((a) => !a.dismissed);
  const keys = new Set(shown.map((a) => a.key));
  for (const banner of [...box.children]) {
    if (!keys.has(banner.dataset.key)) banner.remove();
  }
  for (const alert of shown) {
    let banner = [...box.children].find((b) => b.dataset.key === alert.key);
    if (!banner) {
      banner = document.createElement("div");
      banner.className = "alert-banner";
      banner.dataset.key = alert.key;
      banner.setAttribute("role", "alert");
      const text = document.createElement("span");
      text.className = "alert-text";
      const since = document.createElement("span");
      since.className = "alert-since";
      const dismiss = document.createElement("button");
      dismiss.type = "button";
      dismiss.className = "alert-dismiss";
      dismiss.textContent = "Dismiss";
      dismiss.title = "hide this alert on every open page until it clears and fires again";
      dismiss.addEventListener("click", () => send({ command: "dismiss_alert", key: alert.key }));
      banner.append(text, since, dismiss);
      box.append(banner);
    }
    banner.querySelector(".alert-text").textContent = alert.message;  // its figures change
    banner.querySelector(".alert-since").textContent =
      `since ${new Date(alert.since * 1000).toLocaleString()}`;
    // A watched folder's alerts are its writer's to dismiss (the server refuses it here).
    banner.querySelector(".alert-dismiss").hidden = readOnly;
  }
}

// ------------------------------------------------------------------------------ grid squares
function percent(fraction) { return `${Math.round(100 * fraction)}%`; }

// Red (no good particles) through yellow to green (all good).
function yieldColour(fraction) {
  return `hsl(${Math.round(120 * Math.max(0, Math.min(1, fraction)))}, 65%, 40%)`;
}

// Whether to keep collecting: good particles per hour, the time to the target, new views.
function renderForecast(forecast) {
  $("forecast").hidden = !forecast;
  $("forecast-lines").textContent = forecast ? forecast.lines.join("\n") : "";
}

function renderGridMap(map) {
  // Updates between cycles carry no map (the page keeps its own): the tiles are drawn again
  // only for a new one, never under the user's click.
  map = map ?? null;  // no folder yet: no map either
  if (map === page.mapShown) return;
  page.mapShown = map;
  const tiles = $("squares");
  const note = $("grid-map-note");
  if (!map) {
    note.textContent = "No scored cycle yet: the yield per grid square follows the first " +
      "classification job's scored cycle.";
    tiles.replaceChildren();
    renderHoles(null);
    return;
  }
  if (!map.squares.length) {
    // Not EPU's movie names, or no EPU folder for the holes' squares: per micrograph only.
    note.textContent = "Grid squares are unknown (movie names are not EPU's, or the session " +
      "has no EPU folder: --epu). By micrograph: " +
      `${map.micrographs.toLocaleString()} micrographs, ` +
      `${map.particles.toLocaleString()} particles, ${percent(map.good_fraction)} good` +
      (map.holes ? `, over ${map.holes.toLocaleString()} foil holes.` : ".");
    tiles.replaceChildren();
    renderHoles(null);
    return;
  }
  // Where the stage was, when EPU's files gave it for every square: a square without one
  // could only be put somewhere false, so then all go in collection order.
  const onStage = map.squares.every((q) => q.x_um != null && q.y_um != null);
  const place = onStage ? stageLayout(map.squares, tiles.clientWidth) : null;
  tiles.classList.toggle("on-stage", onStage);
  tiles.style.height = onStage ? `${place.height}px` : "";
  note.textContent = `${map.squares.length} grid squares ` +
    (onStage ? "where the stage put them (as EPU's atlas shows them)" : "in collection order") +
    ", coloured by their share of good particles (red none, green all), sized by particles; " +
    "click one for its foil holes.";
  const most = Math.max(...map.squares.map((q) => q.particles), 1);
  const largest = onStage ? place.side : 120;
  tiles.replaceChildren(...map.squares.map((square) => {
    const tile = document.createElement("button");
    tile.type = "button";
    tile.className = "square";
    tile.dataset.square = square.grid_square;
    tile.setAttribute("aria-pressed", String(square.grid_square === page.square));
    const side = Math.round(largest * (0.47 + 0.53 * Math.sqrt(square.particles / most)));
    tile.style.width = tile.style.height = `${side}px`;
    if (onStage) {
      const [left, top] = place.centre(square);
      tile.style.left = `${left}px`;
      tile.style.top = `${top}px`;
    }
    tile.style.background = yieldColour(square.good_fraction);
    tile.title = `GridSquare_${square.grid_square}: ${square.good_particles.toLocaleString()} ` +
      `good of ${square.particles.toLocaleString()} particles over ${square.micrographs} ` +
      `micrographs, first seen ${square.first_seen || "unknown"}`;
    for (const [name, text] of [["square-id", square.grid_square],
      ["square-good", `${percent(square.good_fraction)} good`],
      ["square-particles", square.particles.toLocaleString()]]) {
      const span = document.createElement("span");
      span.className = name;
      span.textContent = text;
      tile.append(span);
    }
    tile.addEventListener("click", () => {
      page.square = square.grid_square;
      for (const other of tiles.children) {
        other.setAttribute("aria-pressed", String(other === tile));
      }
      renderHoles(square);
    });
    return tile;
  }));
  renderHoles(map.squares.find((q) => q.grid_square === page.square) || null);
}

// Tiles laid out by stage position (µm) in a panel `width` pixels wide: one scale for x and
// y, so that the grid keeps its shape; tiles no larger than the closest two squares are apart.
// Stage +x is drawn right and +y up: EPU's atlas maps image y to stage y with a minus sign
// (the negative m22 of its images' ReferenceTransformation), so up on the atlas is +y, and
// the map then looks like the atlas the squares were chosen on.
function stageLayout(squares, width) {
  const xs = squares.map((q) => q.x_um), ys = squares.map((q) => q.y_um);
  const [left, right] = [Math.min(...xs), Math.max(...xs)];
  const [bottom, top] = [Math.min(...ys), Math.max(...ys)];
  let closest = Infinity;
  for (let i = 0; i < squares.length; i++) {
    for (let j = i + 1; j < squares.length; j++) {
      const apart = Math.hypot(xs[i] - xs[j], ys[i] - ys[j]);
      if (apart > 0) closest = Math.min(closest, apart);  // a square taken twice: one place
    }
  }
  const usable = Math.max(width - 120, 120);
  // µm -> px: the height allowed is about a screen's, wide grids use the width, and a few
  // squares stay close enough together (160 px at most between neighbours) to read as a grid.
  const scales = [usable / (right - left), 480 / (top - bottom), 160 / closest]
    .filter(Number.isFinite);
  const scale = scales.length ? Math.min(...scales) : 0;
  const side = Math.max(16, Math.min(120, Number.isFinite(closest) && scale
    ? 0.95 * closest * scale : 120));
  const margin = side / 2 + 2;
  return {
    side,
    height: Math.ceil((top - bottom) * scale + 2 * margin),
    centre: (q) => [margin + (q.x_um - left) * scale, margin + (top - q.y_um) * scale],
  };
}

function renderHoles(square) {
  $("holes").hidden = !square;
  if (!square) return;
  $("holes-title").textContent = `GridSquare_${square.grid_square}: ` +
    `${square.holes_total} foil holes, ${percent(square.good_fraction)} good of ` +
    `${square.particles.toLocaleString()} particles`;
  $("holes-note").textContent = square.holes.length < square.holes_total
    ? `The first ${square.holes.length} of ${square.holes_total} holes in collection order ` +
      "(the page is sent at most that many per square; yield_holes.csv has them all)." : "";
  $("holes-table").tBodies[0].replaceChildren(...square.holes.map((hole) => {
    const row = document.createElement("tr");
    row.dataset.hole = hole.foil_hole;
    for (const value of [hole.foil_hole, hole.micrographs, hole.particles.toLocaleString(),
      hole.good_particles.toLocaleString(), percent(hole.good_fraction),
      hole.first_seen || ""]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  }));
}
