// lookalike web demo: plain JavaScript, no build step, talks only to this server's /api.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  gallery: null,  // GET /api/gallery
  image: null,    // the query's image: {kind: "upload", file} | {kind: "id", id} | null (a text alone)
  text: null,     // a text (CLIP galleries): the query alone, or one more positive beside the image, sent as "text"
  negativeText: null,  // a text to move away from (CLIP galleries), sent as "negative_text"
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

// --- several examples per query: the image, the texts and the gallery ids added with ＋/− ---

function addExample(side, id) {
  const other = side === "positive" ? "negative" : "positive";
  state[other] = state[other].filter((x) => x !== id);
  if (!state[side].includes(id)) state[side].push(id);
  renderQuery();
  search();
}

function removeExample(side, id) {
  state[side] = state[side].filter((x) => x !== id);
  renderQuery();
  search();
}

// The text box's ＋ and −: the text joins the query in use (＋: "this image, but at night") or is moved away from (−).
function addText(side) {
  const text = $("text-input").value;
  if (!text.trim()) {
    showError("type a text first: + add puts it beside the query in use, − not moves the results away from it");
    return;
  }
  if (side === "positive") {
    if (!state.image && state.text == null) {
      setTextQuery(text);  // nothing to add it to: the text is the query
      return;
    }
    state.text = text;
  } else {
    if (!state.image && state.text == null) {
      showError("search for something first: a text marked − only says what to move the results away from");
      return;
    }
    state.negativeText = text;
  }
  renderQuery();
  search();
}

// Remove one part of the query (its image or a text). When no image or text is left, the first ＋ example becomes the
// query; with no positive example left, there is nothing to search with.
function removePart(part) {
  if (part === "image") {
    state.image = null;
    showQuery(null, "");
  } else if (part === "text") state.text = null;
  else state.negativeText = null;
  if (!state.image && state.text == null && state.positive.length) {
    const id = state.positive.shift();
    state.image = { kind: "id", id };
    showQuery(`/api/images/${id}`, "");
  }
  renderQuery();
  if (!state.image && state.text == null) {
    clearQuery();
    $("status").textContent = "Nothing left to search with: upload an image, describe one, or pick a random gallery image.";
    return;
  }
  search();
}

function clearQuery() {
  state.seq++;  // an answer still on its way is to a query no longer in use
  state.image = null;
  state.text = null;
  clearExamples();
  $("query-preview").hidden = true;
  $("results").replaceChildren();
}

// Back to the query alone: its image (or its text, when it is a text alone).
function clearExamples() {
  state.positive = [];
  state.negative = [];
  state.negativeText = null;
  if (state.image) state.text = null;
  renderQuery();
}

function queryCaption() {
  const image = state.image;
  const parts = [];
  if (image && image.kind === "upload") parts.push(`upload: ${image.file.name} (${(image.file.size / 1024).toFixed(0)} KB)`);
  else if (image) parts.push(`gallery id ${image.id}`);
  if (state.text != null) parts.push(image ? `+ “${state.text}”` : `text: “${state.text}”`);
  if (state.negativeText != null) parts.push(`− “${state.negativeText}”`);
  return parts.join(" ");
}

function renderQuery() {
  const chips = [];
  const chip = (cls, text, remove, attrs = {}) => {
    const button = el("button", { type: "button", title: "remove this example", text: `${text} ×` });
    button.addEventListener("click", remove);
    chips.push(el("li", { class: cls, ...attrs }, button));
  };
  const image = state.image;
  if (image) {
    const name = image.kind === "upload" ? image.file.name : `#${image.id}`;
    chip("query", `＋ ${name}`, () => removePart("image"), { "data-part": "image" });
  }
  if (state.text != null) chip("query", `＋ “${state.text}”`, () => removePart("text"), { "data-part": "text" });
  if (state.negativeText != null) chip("negative-text", `− “${state.negativeText}”`, () => removePart("negative-text"));
  for (const side of ["positive", "negative"]) {
    for (const id of state[side]) chip(side, `${side === "positive" ? "＋" : "−"} #${id}`, () => removeExample(side, id), { "data-id": id });
  }
  $("example-list").replaceChildren(...chips);
  $("examples").hidden = chips.length < 2;  // a query alone is shown above, as the query
  if (image || state.text != null) $("query-caption").textContent = queryCaption();
}

function setUploadQuery(file) {
  if (!file) return;
  const limit = state.gallery.limits.max_upload_bytes;
  if (file.size > limit) {
    showError(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; this server takes uploads up to ${(limit / 2 ** 20).toFixed(0)} MB`);
    return;
  }
  state.image = { kind: "upload", file };
  state.text = null;
  clearExamples();
  showQuery(URL.createObjectURL(file), queryCaption());
  search();
}

function setIdQuery(id) {
  state.image = { kind: "id", id };
  state.text = null;
  clearExamples();
  showQuery(`/api/images/${id}`, queryCaption());
  search();
}

function setTextQuery(text) {
  state.image = null;
  state.text = text;
  clearExamples();
  showQuery(null, queryCaption());
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
  if ((!state.image && state.text == null) || !state.gallery) return;
  const seq = ++state.seq;
  const method = $("method").value;
  const form = new FormData();
  const image = state.image;
  if (image && image.kind === "upload") form.append("image", image.file, image.file.name);
  else if (image) form.append("id", image.id);
  if (state.text != null) form.append("text", state.text);  // alone, or beside the image (CLIP galleries)
  if (state.negativeText != null) form.append("negative_text", state.negativeText);
  form.append("method", method);
  form.append("k", $("k").value);
  for (const name of PARAMS) if (!$(`${name}-row`).hidden) form.append(name, $(name).value);
  if ($("compare").checked) form.append("compare", "exact");
  const where = {};  // the filter: search.filters.Where, every condition must hold
  if ($("filter-label").value) where.label = $("filter-label").value;
  if ($("filter-split").value) where.split = $("filter-split").value;
  if ($("filter-path").value.trim()) where.path = $("filter-path").value.trim();
  const from = $("filter-from").value, to = $("filter-to").value;  // dates (YYYY-MM-DD), the server's local time
  if (from || to) where.mtime = [from || null, to ? `${to}T23:59:59.999` : null];
  const ids = $("filter-ids").value.split(/[\s,]+/).filter(Boolean);
  if (ids.length) where.ids = ids.map((id) => (/^\d+$/.test(id) ? Number(id) : id));  // a bad id: the server's sentence
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
    const texts = [q.text != null ? `+ “${q.text}”` : "", answer.negative_text != null ? `− “${answer.negative_text}”` : ""];
    $("query-caption").textContent = [`gallery id ${q.id} · ${q.label_name || q.label || "no label"} · ${q.path}`, ...texts].filter(Boolean).join(" ");
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
  state.hits = answer.results.map((r) => r.id);  // ringed on the map
  renderCompare(answer, q, higherIsBetter);

  const params = Object.entries(answer.params).map(([k, v]) => `${k}=${v}`).join(", ");
  let status = `${answer.results.length} results · ${answer.method}${params ? " (" + params + ")" : ""} · ${higherIsBetter ? "cosine similarity, higher is nearer" : "squared L2 distance, lower is nearer"}`;
  const labelled = answer.results.filter((r) => r.same_label !== null);
  if (labelled.length) status += ` · ${labelled.filter((r) => r.same_label).length}/${labelled.length} share the query's label (green)`;
  if (!answer.real) {
    // A text query on random weights is the easiest result to over-read: say so in the manifest's own words.
    const random = answer.warnings.find((w) => w.startsWith("RANDOM"));
    const texts = q.text != null || answer.negative_text != null;
    status += texts && random ? ` · ⚠ ${random}` : " · ⚠ random weights / generated data";
  }
  $("status").textContent = status;
  renderLatency(answer.latency_ms, q, answer.negative_text != null);
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

function renderLatency(t, q, negativeText) {
  const kind = q.kind;
  // decode_ms is the upload's decoding and the texts' tokenizing, summed; an id query's row is stored
  const decoded = [kind === "upload" ? "decode + preprocess" : "", q.text != null || negativeText ? "tokenize" : ""];
  const parts = [
    [decoded.filter(Boolean).join(" + ") || "decode + preprocess", t.decode_ms, "var(--decode)"],
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
  for (const view of ["search", "dupes", "map"]) {
    $(`${view}-view`).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-selected", String(view === name));
  }
  if (name === "dupes" && !dupes.loaded) {
    dupes.loaded = true;
    loadDuplicates({});  // the server's default preset; the answer sets the slider
  }
  if (name === "map") {
    if (!map.points) loadMap();
    else drawMap();
  }
}

// --- the map: GET /api/map, every row a point on one canvas ---

const map = {
  points: null,     // {x, y, label: Uint16Array, labels, count, grid}
  pixels: null,     // Float32Array [px0, py0, px1, …]: each row's position on the canvas
  cells: null,      // a CELLS × CELLS grid of row ids, to find the point under the pointer
  drag: null,       // {x0, y0, x1, y1} while a box is drawn
};
const MAP_CELLS = 64;
const MAP_MARGIN = 8;

function decodeUint16(text) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return new Uint16Array(bytes.buffer);  // little-endian, as the server packs it (every browser is little-endian)
}

function labelColour(i, n) {
  if (i >= n) return [150, 150, 150];
  const hue = (i * 137.508) % 360;  // the golden angle: neighbouring labels get distant hues
  const c = 0.55, x = c * (1 - Math.abs(((hue / 60) % 2) - 1)), m = 0.3;
  const [r, g, b] = hue < 60 ? [c, x, 0] : hue < 120 ? [x, c, 0] : hue < 180 ? [0, c, x] : hue < 240 ? [0, x, c] : hue < 300 ? [x, 0, c] : [c, 0, x];
  return [r, g, b].map((v) => Math.round(255 * (v + m)));
}

async function loadMap() {
  const started = performance.now();
  $("map-status").textContent = "mapping the gallery…";
  let answer;
  try {
    const response = await fetch("/api/map");
    answer = await response.json();
    if (!response.ok) {
      $("map-status").textContent = answer.error || `HTTP ${response.status}`;
      return;
    }
  } catch (err) {
    $("map-status").textContent = `the server did not answer (${err.message})`;
    return;
  }
  map.points = { x: decodeUint16(answer.x), y: decodeUint16(answer.y), label: decodeUint16(answer.label_index), labels: answer.labels, count: answer.count, grid: answer.grid };
  drawMap();
  const ms = performance.now() - started;
  document.body.dataset.mapDrawMs = ms.toFixed(1);  // what benchmarks/bench_server.py reads: request to first draw
  $("map-status").textContent = `${answer.count} images · ${answer.note}` + (answer.real ? "" : " · ⚠ random weights / generated data") + ` · drawn in ${ms.toFixed(0)} ms`;
}

function drawMap() {
  const p = map.points;
  if (!p) return;
  const canvas = $("map-canvas"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, span = w - 2 * MAP_MARGIN;
  const image = ctx.createImageData(w, h);
  image.data.fill(255);
  map.pixels = new Float32Array(2 * p.count);
  map.cells = Array.from({ length: MAP_CELLS * MAP_CELLS }, () => []);
  const colours = p.labels.map((_, i) => labelColour(i, p.labels.length));
  const grey = [150, 150, 150];
  for (let i = 0; i < p.count; i++) {
    const px = MAP_MARGIN + (p.x[i] / p.grid) * span, py = h - MAP_MARGIN - (p.y[i] / p.grid) * span;
    map.pixels[2 * i] = px;
    map.pixels[2 * i + 1] = py;
    map.cells[Math.min(MAP_CELLS - 1, Math.floor((px / w) * MAP_CELLS)) * MAP_CELLS + Math.min(MAP_CELLS - 1, Math.floor((py / h) * MAP_CELLS))].push(i);
    const [r, g, b] = p.label[i] < colours.length ? colours[p.label[i]] : grey;
    for (let dx = 0; dx < 2; dx++) for (let dy = 0; dy < 2; dy++) {
      const o = 4 * ((Math.round(py) + dy) * w + Math.round(px) + dx);
      image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b;
    }
  }
  ctx.putImageData(image, 0, 0);
  drawMapMarks(ctx);
}

function drawMapMarks(ctx) {
  const mark = (id, radius, style, dash) => {
    if (id == null || !map.pixels || id >= map.points.count) return;
    ctx.beginPath();
    ctx.setLineDash(dash);
    ctx.strokeStyle = style;
    ctx.lineWidth = 2;
    ctx.arc(map.pixels[2 * id], map.pixels[2 * id + 1], radius, 0, 2 * Math.PI);
    ctx.stroke();
  };
  for (const id of state.hits || []) mark(id, 4, "#333", [2, 2]);
  if (state.image && state.image.kind === "id") mark(state.image.id, 8, "#d22", []);
  ctx.setLineDash([]);
  if (map.drag) {
    const { x0, y0, x1, y1 } = map.drag;
    ctx.strokeStyle = "#2266cc";
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  }
}

function canvasPoint(event) {
  const canvas = $("map-canvas"), rect = canvas.getBoundingClientRect();
  return [((event.clientX - rect.left) * canvas.width) / rect.width, ((event.clientY - rect.top) * canvas.height) / rect.height];
}

function pointAt(x, y, radius = 6) {
  const canvas = $("map-canvas");
  const cx = Math.floor((x / canvas.width) * MAP_CELLS), cy = Math.floor((y / canvas.height) * MAP_CELLS);
  let best = null, bestD = radius * radius;
  for (let i = Math.max(0, cx - 1); i <= Math.min(MAP_CELLS - 1, cx + 1); i++) {
    for (let j = Math.max(0, cy - 1); j <= Math.min(MAP_CELLS - 1, cy + 1); j++) {
      for (const id of map.cells[i * MAP_CELLS + j]) {
        const d = (map.pixels[2 * id] - x) ** 2 + (map.pixels[2 * id + 1] - y) ** 2;
        if (d <= bestD) { best = id; bestD = d; }
      }
    }
  }
  return best;
}

function selectBox(box) {
  const [xa, xb] = [Math.min(box.x0, box.x1), Math.max(box.x0, box.x1)], [ya, yb] = [Math.min(box.y0, box.y1), Math.max(box.y0, box.y1)];
  const chosen = [];
  for (let i = 0; i < map.points.count; i++) {
    const px = map.pixels[2 * i], py = map.pixels[2 * i + 1];
    if (px >= xa && px <= xb && py >= ya && py <= yb) chosen.push(i);
  }
  $("map-selection-status").textContent = `${chosen.length} images in the box` + (chosen.length > 60 ? " (the first 60 shown)" : "");
  $("map-selection").replaceChildren(...chosen.slice(0, 60).map((id) => {
    const button = el("button", { class: "card", type: "button", title: `search from gallery id ${id}` }, el("img", { src: `/api/images/${id}/thumb`, alt: `gallery id ${id}`, loading: "lazy" }));
    button.addEventListener("click", () => { showView("search"); setIdQuery(id); });
    return el("li", { class: "result", "data-id": id }, button);
  }));
}

function wireMap() {
  const canvas = $("map-canvas"), tip = $("map-tip");
  canvas.addEventListener("mousedown", (e) => { const [x, y] = canvasPoint(e); map.drag = { x0: x, y0: y, x1: x, y1: y }; });
  canvas.addEventListener("mousemove", (e) => {
    if (!map.points) return;
    const [x, y] = canvasPoint(e);
    if (map.drag) {
      map.drag.x1 = x; map.drag.y1 = y;
      drawMap();
      return;
    }
    const id = pointAt(x, y);
    tip.hidden = id == null;
    if (id == null) return;
    const label = map.points.label[id] < map.points.labels.length ? map.points.labels[map.points.label[id]] : "no label";
    $("map-tip-img").src = `/api/images/${id}/thumb`;
    $("map-tip-text").textContent = `#${id} · ${label}`;
    tip.dataset.id = id;
    tip.style.left = `${e.offsetX + 12}px`;
    tip.style.top = `${e.offsetY + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("mouseup", (e) => {
    const box = map.drag;
    map.drag = null;
    if (!box || !map.points) return;
    if (Math.abs(box.x1 - box.x0) + Math.abs(box.y1 - box.y0) > 6) {
      drawMap();
      selectBox(box);
      return;
    }
    const [x, y] = canvasPoint(e);
    const id = pointAt(x, y);
    if (id != null) { showView("search"); setIdQuery(id); }
  });
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
    `threshold ${answer.threshold}${answer.preset ? ` (preset ${answer.preset})` : ""}, scores against each pair's ${answer.scoring.neighbour_k}th neighbours (median r ${answer.scoring.r_median.toFixed(3)}) in ${answer.scoring.whitened_dims ? answer.scoring.whitened_dims + " whitened directions" : "raw embeddings"}`,
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
  for (const id of ["filter-label", "filter-split", "filter-path", "filter-from", "filter-to", "filter-ids"]) {
    $(id).addEventListener("change", search);
  }
  $("tab-search").addEventListener("click", () => showView("search"));
  $("tab-dupes").addEventListener("click", () => showView("dupes"));
  $("tab-map").addEventListener("click", () => showView("map"));
  wireMap();
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
  $("text-add").addEventListener("click", () => addText("positive"));
  $("text-not").addEventListener("click", () => addText("negative"));

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
