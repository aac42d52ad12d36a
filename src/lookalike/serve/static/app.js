// lookalike web demo: plain JavaScript, no build step, talks only to this server's /api.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  gallery: null,  // GET /api/gallery
  query: null,    // {kind: "upload", file} | {kind: "id", id} | {kind: "text", text}
  seq: 0,         // answers to superseded requests are dropped
  positive: [],   // gallery ids added to the query as examples (＋), sent as "positive"
  negative: [],   // gallery ids to move away from (−), sent as "negative"
};
const PARAMS = ["nprobe", "efSearch", "k_factor"];  // per-request search parameters; ranges come from /api/gallery
const dupes = {
  loaded: false,  // the Duplicates view asks the server only once it is opened (a duplicate search is CPU work)
  seq: 0,         // answers to superseded thresholds are dropped
  timer: null,    // the slider's debounce
};
const DUPES_DEBOUNCE_MS = 300;
const DUPES_SHOWN_GROUPS = 200;  // groups drawn at once; the export holds them all

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;  // CSSOM, allowed by the page's CSP
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function ms(x) {
  if (x == null) return "—";
  return x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`;
}

function fileName(path) {
  if (/^[a-z]+:[^\\/]/.test(path || "")) return path;  // "synthetic:…" rows written from arrays: no file to name
  return (path || "").split(/[\\/]/).pop();
}

function thumbnail(r) {
  const img = el("img", { src: `/api/images/${r.id}/thumb`, alt: r.label_name || r.label || `gallery id ${r.id}`, loading: "lazy" });
  // Rows written from arrays (generated embeddings) have no image file: show a labelled blank instead.
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "no-image", text: "no image" })), { once: true });
  return img;
}

function methodInfo(name) {
  return state.gallery.methods.find((m) => m.name === name);
}

// --- gallery, provenance and controls ---

async function loadGallery() {
  const response = await fetch("/api/gallery");
  const g = await response.json();
  if (!response.ok) throw new Error(g.error || response.statusText);
  state.gallery = g;

  $("provenance").textContent = g.provenance;
  const badge = $("real-badge");
  badge.hidden = false;
  badge.className = "badge " + (g.real ? "real" : "not-real");
  badge.textContent = g.real ? "trained model · real data" : "⚠ NOT A REAL RESULT";
  if (g.warnings.length) {
    const box = $("warnings");
    box.replaceChildren(...g.warnings.map((w) => el("p", { text: "⚠ " + w })));
    box.hidden = false;
  }

  const weights = g.weights.kind === "random"
    ? el("span", { class: "flag", text: `RANDOM (seed ${g.weights.seed})` })
    : `${g.weights.kind} · ${g.weights.source}`;
  const data = g.data.synthetic
    ? el("span", { class: "flag", text: "GENERATED (not real photos)" })
    : `${g.data.kind} · ${g.data.root}`;
  const facts = [
    ["model", g.image_size ? `${g.model} (${g.dim}-d, ${g.image_size}px, ${g.precision})` : `${g.model} (${g.dim}-d, no model)`],
    ["weights", weights],
    ["data", data],
    ["images", g.count.toLocaleString()],
    ["searched", g.database],
    ["threads", `torch ${g.threads.torch}, faiss ${g.threads.faiss_omp}; ${g.compute_slots} compute slot(s)`],
    ["folder", g.path],
  ];
  $("gallery-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));

  const select = $("method");
  select.replaceChildren(...g.methods.map((m) => el("option", { value: m.name, text: m.name + (m.saved ? " (saved)" : "") })));
  select.value = g.default_method && g.methods.some((m) => m.name === g.default_method.method) ? g.default_method.method : g.methods[0].name;
  select.disabled = false;
  $("random-btn").disabled = false;
  if (!g.uploads) {
    $("drop").hidden = true;
    $("status").textContent = "This gallery's embeddings were generated without a model: pick a random gallery image to search.";
  }
  $("text-form").hidden = !g.text;  // only a model with a text tower (CLIP) can embed text
  $("filter-label").append(...g.labels.map((label) => el("option", { value: label, text: label })));
  $("filter-split").append(...Object.keys(g.data.splits || {}).map((split) => el("option", { value: split, text: split })));
  if (g.text) $("status").textContent = "Upload an image, drop one on the box, describe one in words, or pick a random gallery image.";
  $("compare").title = `search exactly too (${g.exact_method}, same rows) and show what the method missed`;
  updateMethodControls();
}

function makeParamRows() {
  // One hidden slider row per parameter; updateMethodControls shows those the chosen method has.
  $("param-rows").replaceChildren(...PARAMS.map((name) => el("div", { id: `${name}-row`, class: "row", hidden: "" },
    el("label", { for: name, text: name }),
    el("input", { id: name, type: "range", min: "1", max: "1", value: "1" }),
    el("output", { id: `${name}-value`, for: name }))));
}

function updateMethodControls() {
  const m = methodInfo($("method").value);
  const kind = m.factory ? `FAISS ${m.factory}` : `brute force (${m.params.backend || "exact"})`;
  $("method-desc").textContent = `${kind}, ${m.metric === "ip" ? "cosine" : "squared L2"}, ${m.ntotal.toLocaleString()} vectors`;
  const k = $("k");
  k.max = m.k_range[1];
  if (+k.value > m.k_range[1]) k.value = m.k_range[1];
  for (const name of PARAMS) {
    const range = m.param_ranges[name];
    $(`${name}-row`).hidden = !range;
    if (!range) continue;
    const slider = $(name);
    slider.min = range[0];
    slider.max = range[1];
    // the default method starts at the setting the server measured on this gallery, the others at their own
    const measured = state.gallery.default_method && state.gallery.default_method.method === m.name ? state.gallery.default_method.params[name] : undefined;
    slider.value = Math.min(range[1], Math.max(range[0], measured || m.params[name] || range[0]));
    $(`${name}-value`).textContent = slider.value;
  }
}

// --- queries ---

// --- several examples per query ---

function addExample(side, id) {
  const other = side === "positive" ? "negative" : "positive";
  state[other] = state[other].filter((x) => x !== id);
  if (!state[side].includes(id)) state[side].push(id);
  renderExamples();
  search();
}

function removeExample(side, id) {
  state[side] = state[side].filter((x) => x !== id);
  renderExamples();
  search();
}

function clearExamples() {
  state.positive = [];
  state.negative = [];
  renderExamples();
}

function renderExamples() {
  const chips = [];
  for (const side of ["positive", "negative"]) {
    for (const id of state[side]) {
      const button = el("button", { type: "button", title: "remove this example", text: `${side === "positive" ? "＋" : "−"} #${id} ×` });
      button.addEventListener("click", () => removeExample(side, id));
      chips.push(el("li", { class: side, "data-id": id }, button));
    }
  }
  $("example-list").replaceChildren(...chips);
  $("examples").hidden = !chips.length;
}

function setUploadQuery(file) {
  if (!file) return;
  const limit = state.gallery.limits.max_upload_bytes;
  if (file.size > limit) {
    showError(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; this server takes uploads up to ${(limit / 2 ** 20).toFixed(0)} MB`);
    return;
  }
  state.query = { kind: "upload", file };
  clearExamples();
  showQuery(URL.createObjectURL(file), `upload: ${file.name} (${(file.size / 1024).toFixed(0)} KB)`);
  search();
}

function setIdQuery(id) {
  state.query = { kind: "id", id };
  clearExamples();
  showQuery(`/api/images/${id}`, `gallery id ${id}`);
  search();
}

function setTextQuery(text) {
  state.query = { kind: "text", text };
  clearExamples();
  showQuery(null, `text: “${text}”`);
  search();
}

function showQuery(src, caption) {
  const img = $("query-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  if (src) img.src = src;
  else img.removeAttribute("src");
  img.hidden = !src;
  $("query-caption").textContent = caption;
  $("query-preview").hidden = false;
}

async function search() {
  if (!state.query || !state.gallery) return;
  const seq = ++state.seq;
  const method = $("method").value;
  const form = new FormData();
  if (state.query.kind === "upload") form.append("image", state.query.file, state.query.file.name);
  else if (state.query.kind === "text") form.append("text", state.query.text);
  else form.append("id", state.query.id);
  form.append("method", method);
  form.append("k", $("k").value);
  for (const name of PARAMS) if (!$(`${name}-row`).hidden) form.append(name, $(name).value);
  if ($("compare").checked) form.append("compare", "exact");
  const where = {};  // the filter: search.filters.Where, every condition must hold
  if ($("filter-label").value) where.label = $("filter-label").value;
  if ($("filter-split").value) where.split = $("filter-split").value;
  if ($("filter-path").value.trim()) where.path = $("filter-path").value.trim();
  if (Object.keys(where).length) form.append("where", JSON.stringify(where));
  if (state.positive.length) form.append("positive", state.positive.join(","));
  if (state.negative.length) form.append("negative", state.negative.join(","));

  $("status").textContent = "searching…";
  document.body.dataset.busy = "1";
  let answer;
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    answer = await response.json();
    if (seq !== state.seq) return;
    if (!response.ok) {
      showError(answer.error || `HTTP ${response.status}`);
      $("status").textContent = "";
      return;
    }
  } catch (err) {
    if (seq === state.seq) showError(`the server did not answer (${err.message})`);
    return;
  } finally {
    if (seq === state.seq) delete document.body.dataset.busy;
  }
  hideError();
  render(answer);
}

// --- rendering ---

function card(r, q, higherIsBetter, extraMark = null) {
  const isQuery = q.kind === "id" && r.id === q.id;
  const mark = isQuery
    ? el("span", { class: "self-mark", title: "the query image itself (it is in the searched set)", text: "= query" })
    : r.same_label ? el("span", { class: "same-mark", title: "same label as the query", text: "✓ same" }) : null;
  const button = el(
    "button",
    { class: "card", type: "button", title: `search from gallery id ${r.id}\n${r.path}` },
    thumbnail(r),
    el("div", { class: "meta" },
      el("span", { class: "rank", text: `#${r.rank}` }),
      mark,
      extraMark,
      el("span", { class: "score", title: higherIsBetter ? "cosine similarity" : "squared L2 distance", text: r.score.toFixed(4) })),
    el("div", { class: "label", title: r.label || "", text: r.label_name || r.label || "(no label)" }),
    el("div", { class: "path", title: r.path, text: fileName(r.path) }),
  );
  button.addEventListener("click", () => setIdQuery(r.id));
  return button;
}

function render(answer) {
  const q = answer.query;
  if (q.kind === "id") {
    $("query-caption").textContent = `gallery id ${q.id} · ${q.label_name || q.label || "no label"} · ${q.path}`;
  }
  const higherIsBetter = answer.metric === "ip";
  const compared = answer.compare;
  const cards = answer.results.map((r) => {
    const exactMark = r.in_exact == null ? null : r.in_exact
      ? el("span", { class: "exact-mark", title: `also in the exact top ${answer.k}`, text: "✓ exact" })
      : el("span", { class: "not-exact-mark", title: `not in the exact top ${answer.k}`, text: "∉ exact" });
    const classes = ["result", r.same_label ? "same" : "", r.in_exact === true ? "in-exact" : "", r.in_exact === false ? "not-exact" : ""];
    const more = el("button", { class: "more", type: "button", title: "more like this: add it to the query as an example", text: "＋ more like this" });
    const less = el("button", { class: "less", type: "button", title: "less like this: move the results away from it", text: "− less" });
    more.addEventListener("click", () => addExample("positive", r.id));
    less.addEventListener("click", () => addExample("negative", r.id));
    return el("li", { class: classes.filter(Boolean).join(" "), "data-id": r.id, "data-score": r.score, "data-label": r.label || "", "data-split": r.split || "" },
      card(r, q, higherIsBetter, exactMark), el("div", { class: "example-actions" }, more, less));
  });
  $("results").replaceChildren(...cards);
  renderCompare(answer, q, higherIsBetter);

  const params = Object.entries(answer.params).map(([k, v]) => `${k}=${v}`).join(", ");
  let status = `${answer.results.length} results · ${answer.method}${params ? " (" + params + ")" : ""} · ${higherIsBetter ? "cosine similarity, higher is nearer" : "squared L2 distance, lower is nearer"}`;
  const labelled = answer.results.filter((r) => r.same_label !== null);
  if (labelled.length) status += ` · ${labelled.filter((r) => r.same_label).length}/${labelled.length} share the query's label (green)`;
  if (!answer.real) {
    // A text query on random weights is the easiest result to over-read: say so in the manifest's own words.
    const random = answer.warnings.find((w) => w.startsWith("RANDOM"));
    status += q.kind === "text" && random ? ` · ⚠ ${random}` : " · ⚠ random weights / generated data";
  }
  $("status").textContent = status;
  renderLatency(answer.latency_ms, q.kind);
}

function renderCompare(answer, q, higherIsBetter) {
  const c = answer.compare;
  $("compare-strip").hidden = !c;
  $("missed").hidden = !c || !c.missed_ids.length;
  if (!c) {
    $("missed-results").replaceChildren();
    return;
  }
  const found = c.exact_results.length - c.missed_ids.length;
  $("compare-recall").textContent = `recall@${answer.k} ${c.recall.toFixed(2)}`;
  $("compare-recall-note").textContent = `${found} of the ${c.exact_results.length} exact neighbours found by ${answer.method}; ${c.missed_ids.length} missed`;
  $("compare-latency").replaceChildren(
    el("dt", { text: answer.method }), el("dd", { text: ms(c.method_ms), "data-part": "method" }),
    el("dt", { text: `${c.exact_method} (exact)` }), el("dd", { text: ms(c.exact_ms), "data-part": "exact" }),
  );
  const missed = new Set(c.missed_ids);
  $("missed-title").textContent = `Missed by ${answer.method}: in the exact top ${answer.k}, not in its results (${c.missed_ids.length})`;
  $("missed-results").replaceChildren(...c.exact_results.filter((r) => missed.has(r.id)).map((r) =>
    el("li", { class: "result missed-result", "data-id": r.id, "data-score": r.score }, card(r, q, higherIsBetter,
      el("span", { class: "not-exact-mark", title: `exact rank ${r.rank}`, text: "missed" })))));
}

function renderLatency(t, kind) {
  const parts = [
    [kind === "text" ? "tokenize" : "decode + preprocess", t.decode_ms, "var(--decode)"],
    ["embed", t.embed_ms, "var(--embed)"],
    ["search", t.search_ms, "var(--search)"],
    ["queue wait", t.wait_ms, "var(--wait)"],
  ];
  const total = Math.max(t.total_ms, 1e-6);
  $("latency-bar").replaceChildren(...parts.filter(([, v]) => v).map(([name, v, color]) =>
    el("span", { style: `width:${(100 * v / total).toFixed(2)}%;background:${color}`, title: `${name}: ${ms(v)}` })));
  const rows = parts.map(([name, v, color]) => [
    el("dt", {}, el("span", { class: "swatch", style: `background:${color}` }), name),
    el("dd", { text: v == null && kind === "id" ? "— (stored)" : ms(v), "data-part": name }),
  ]);
  rows.push([el("dt", { text: "total" }), el("dd", { text: ms(t.total_ms) })]);
  $("latency").replaceChildren(...rows.flat());
}

// --- near-duplicates (GET /api/duplicates) ---

function showView(name) {
  const onDupes = name === "dupes";
  $("search-view").hidden = onDupes;
  $("dupes-view").hidden = !onDupes;
  $("tab-search").setAttribute("aria-selected", String(!onDupes));
  $("tab-dupes").setAttribute("aria-selected", String(onDupes));
  if (onDupes && !dupes.loaded) {
    dupes.loaded = true;
    loadDuplicates({});  // the server's default preset; the answer sets the slider
  }
}

function dupesUrl(params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null)).toString();
  return "/api/duplicates" + (query ? "?" + query : "");
}

async function loadDuplicates(params) {
  clearTimeout(dupes.timer);
  const seq = ++dupes.seq;
  $("dupes-status").textContent = "finding near-duplicates…";
  document.body.dataset.dupesBusy = "1";
  const started = performance.now();
  let answer;
  try {
    const response = await fetch(dupesUrl(params));
    answer = await response.json();
    if (seq !== dupes.seq) return;
    if (!response.ok) {
      showDupesError(answer.error || `HTTP ${response.status}`);
      $("dupes-status").textContent = "";
      return;
    }
  } catch (err) {
    if (seq === dupes.seq) showDupesError(`the server did not answer (${err.message})`);
    return;
  } finally {
    if (seq === dupes.seq) delete document.body.dataset.dupesBusy;
  }
  $("dupes-error").hidden = true;
  renderDuplicates(answer, performance.now() - started, params.threshold == null);
}

function showDupesError(message) {
  const box = $("dupes-error");
  box.textContent = message;
  box.hidden = false;
}

function renderDuplicates(answer, elapsedMs, moveSlider) {
  if (moveSlider) {  // a preset or the default; an answer to the slider leaves it where the user has it now
    $("dupes-threshold").value = answer.threshold;
    $("dupes-threshold-value").textContent = (+answer.threshold).toFixed(2);
  }
  $("dupes-presets").replaceChildren(...Object.entries(answer.presets).map(([name, value]) => {
    const button = el("button", { type: "button", class: "preset" + (value === answer.threshold ? " active" : ""), "data-preset": name, text: `${name} ${value}` });
    button.addEventListener("click", () => loadDuplicates({ preset: name }));
    return button;
  }));
  const asked = answer.preset ? { preset: answer.preset } : { threshold: answer.threshold };
  const stem = `duplicates-${answer.threshold}`;  // the name the server gives the CSV
  Object.assign($("dupes-json"), { href: dupesUrl(asked), download: `${stem}.json` });
  Object.assign($("dupes-csv"), { href: dupesUrl({ ...asked, format: "csv" }), download: `${stem}.csv` });

  const groups = answer.groups;
  const images = groups.reduce((n, g) => n + g.members.length, 0);
  const recall = answer.pair_recall == null ? "" : `, pair recall ${answer.pair_recall.toFixed(3)} against exact`;
  $("dupes-status").textContent = [
    `${groups.length} groups holding ${images} images (${images - groups.length} beside their keepers) among ${answer.rows.toLocaleString()} rows`,
    `threshold ${answer.threshold}${answer.preset ? ` (preset ${answer.preset})` : ""}, baseline cosine b = ${answer.scoring.baseline_cosine.toFixed(4)}`,
    `method ${answer.method}${recall}`,
    `identical content: ${answer.identical_tier}`,
    `${(elapsedMs / 1000).toFixed(2)} s`,
    ...answer.notes,
  ].join(" · ");
  $("dupes-groups").replaceChildren(...groups.slice(0, DUPES_SHOWN_GROUPS).map((g, i) => groupItem(g, i, answer.keeper_rule)));
  const more = $("dupes-more");
  more.hidden = groups.length <= DUPES_SHOWN_GROUPS;
  more.textContent = `showing the first ${DUPES_SHOWN_GROUPS} of ${groups.length} groups; the export holds them all`;
}

function groupItem(g, index, keeperRule) {
  return el("li", { class: "group", "data-keep": g.keep, "data-size": g.members.length },
    el("h3", { text: `group ${index + 1} · ${g.members.length} images · lowest pairwise score ${g.min_similarity.toFixed(3)}` }),
    el("ol", { class: "members" }, ...g.members.map((m) => memberItem(m, keeperRule))));
}

function memberItem(m, keeperRule) {
  const keeper = m.reason === "keeper";
  const mark = keeper
    ? el("span", { class: "keep-mark", title: `suggested keeper: ${keeperRule}`, text: "★ keep" })
    : el("span", { class: "reason", title: "why it is in the group", text: m.reason });
  const button = el(
    "button",
    { class: "card", type: "button", title: `search from gallery id ${m.id}\n${m.path}` },
    thumbnail(m),
    el("div", { class: "meta" }, mark, el("span", { class: "score", title: "normalised score against the keeper", text: m.score.toFixed(3) })),
    el("div", { class: "path", title: m.path, text: fileName(m.path) }),
    el("div", { class: "label", text: [m.split, m.label_name || m.label].filter(Boolean).join(" · ") || "(no label)" }),
  );
  button.addEventListener("click", () => { showView("search"); setIdQuery(m.id); });
  return el("li", { class: "member" + (keeper ? " keeper" : ""), "data-id": m.id, "data-reason": m.reason, "data-path": m.path }, button);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

// --- wiring ---

function wire() {
  makeParamRows();
  $("file-input").addEventListener("change", (e) => setUploadQuery(e.target.files[0]));
  $("random-btn").addEventListener("click", () => setIdQuery(Math.floor(Math.random() * state.gallery.count)));
  $("method").addEventListener("change", () => { updateMethodControls(); search(); });
  $("k").addEventListener("change", search);
  for (const name of PARAMS) {
    $(name).addEventListener("input", () => { $(`${name}-value`).textContent = $(name).value; });
    $(name).addEventListener("change", search);
  }
  $("compare").addEventListener("change", search);
  $("examples-clear").addEventListener("click", () => { clearExamples(); search(); });
  for (const id of ["filter-label", "filter-split", "filter-path"]) $(id).addEventListener("change", search);
  $("tab-search").addEventListener("click", () => showView("search"));
  $("tab-dupes").addEventListener("click", () => showView("dupes"));
  const threshold = $("dupes-threshold");
  threshold.addEventListener("input", () => {
    $("dupes-threshold-value").textContent = (+threshold.value).toFixed(2);
    clearTimeout(dupes.timer);
    dupes.timer = setTimeout(() => loadDuplicates({ threshold: threshold.value }), DUPES_DEBOUNCE_MS);
  });
  threshold.addEventListener("change", () => loadDuplicates({ threshold: threshold.value }));
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setTextQuery($("text-input").value);
  });

  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
    setUploadQuery(file);
  });
  // A file dropped beside the box must not make the browser navigate away from the page.
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (e) => e.preventDefault());
}

wire();
loadGallery().catch((err) => showError(`cannot load the gallery description: ${err.message}`));
