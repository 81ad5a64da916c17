// memlm web page: chat with streamed replies and the memories each answer used; the user's memories;
// documents memorized with progress; blind pairwise comparison; the evaluation report.
// Plain JS, no dependencies. Every text from the server is inserted with textContent (never as HTML).
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { key: localStorage.getItem("memlm-key") || "", info: null, history: [] };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function notice(message, kind = "error") {
  const box = $("#notice");
  box.textContent = message;
  box.className = "notice" + (kind === "info" ? " info" : "");
  box.hidden = !message;
}

function headers(json = true) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  if (state.key) out["Authorization"] = "Bearer " + state.key;
  return out;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(options.body !== undefined), ...(options.headers || {}) } });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
  if (response.status === 401) { $("#key-form").hidden = false; }
  return new Error(message);
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data || data === "[DONE]") continue;
      yield JSON.parse(data);
    }
  }
}

// --- start-up ----------------------------------------------------------------------------------
async function start() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#key").value.trim();
    localStorage.setItem("memlm-key", state.key);
    $("#key").value = "";
    connect();
  });
  $("#chat-form").addEventListener("submit", (event) => { event.preventDefault(); sendMessage(); });
  $("#chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); sendMessage(); }
  });
  $("#memory-search-form").addEventListener("submit", (event) => { event.preventDefault(); loadMemories($("#memory-query").value); });
  $("#memory-show-all").addEventListener("click", () => { $("#memory-query").value = ""; loadMemories(""); });
  $("#memory-add-form").addEventListener("submit", (event) => { event.preventDefault(); addMemory(); });
  $("#document-file").addEventListener("change", readFile);
  $("#document-form").addEventListener("submit", (event) => { event.preventDefault(); memorize(); });
  $("#document-search-form").addEventListener("submit", (event) => { event.preventDefault(); searchDocuments(); });
  $("#compare-form").addEventListener("submit", (event) => { event.preventDefault(); compare(); });
  for (const button of document.querySelectorAll("[data-vote]")) {
    button.addEventListener("click", () => vote(button.dataset.vote));
  }
  try {
    state.info = await api("/v1/server");
  } catch (error) { notice("cannot reach the server: " + error.message); return; }
  $("#version").textContent = "v" + state.info.version;
  const select = $("#model");
  for (const model of state.info.models) select.append(el("option", { value: model }, model));
  select.value = state.info.default_model;
  if (!state.info.documents) {
    $("#document-submit").disabled = true;
    $("#document-status").textContent = "this server has no key/value memory (start it with --memory bank,knn-joint)";
  }
  connect();
}

async function connect() {
  if (state.info.auth === "keys" && !state.key) {
    $("#key-form").hidden = false;
    notice("This server needs an API key: create one with `memlm keys create --user NAME`.", "info");
    return;
  }
  try {
    const me = await api("/v1/me");
    $("#user-badge").textContent = me.auth === "local" ? `${me.user} (local, no key)` : `${me.user}${me.role === "admin" ? " · admin" : ""}`;
    $("#key-form").hidden = true;
    notice("");
  } catch (error) { notice(error.message); }
}

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === name);
  if (name === "memories") loadMemories($("#memory-query").value);
  if (name === "documents") loadDocuments();
  if (name === "compare") loadSummary();
  if (name === "report") loadReport();
  if (name === "api") loadApi();
}

// --- chat --------------------------------------------------------------------------------------
function memoriesPanel(side, memories, learned) {
  side.replaceChildren(el("h4", {}, "memories used"));
  if (!memories.length) side.append(el("p", { class: "none" }, "none"));
  else side.append(el("ul", {}, ...memories.map((m) => el("li", { "data-memory-id": String(m.id) }, m.memory, " ",
    el("span", { class: "score" }, `(${m.similarity.toFixed(2)})`)))));
  if (learned && learned.length) {
    const stored = learned.filter((l) => l.event === "ADD");
    if (stored.length) side.append(el("p", { class: "learned" }, "learned: " + stored.map((l) => l.memory).join(" · ")));
  }
}

async function sendMessage() {
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  $("#chat-empty")?.remove();
  const conversation = $("#conversation");
  conversation.append(el("div", { class: "turn user" }, el("div", { class: "bubble" }, el("span", { class: "role" }, "you"), text)));
  const content = el("span", { class: "content" });
  const bubble = el("div", { class: "bubble streaming" }, el("span", { class: "role" }, "assistant"), content);
  const side = el("aside", { class: "side" }, el("h4", {}, "memories used"), el("p", { class: "none" }, "…"));
  const turn = el("div", { class: "turn assistant" }, bubble, side);
  conversation.append(turn);
  turn.scrollIntoView({ block: "end" });
  $("#send").disabled = true;
  state.history.push({ role: "user", content: text });
  let reply = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ model: $("#model").value, messages: state.history.slice(-8), stream: true }),
    });
    if (!response.ok) throw await failure(response);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.memlm) memoriesPanel(side, chunk.memlm.memories, chunk.memlm.learned);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) { reply += delta.content; content.textContent = reply; }
    }
    state.history.push({ role: "assistant", content: reply });
    turn.dataset.done = "true";
  } catch (error) {
    content.textContent = reply || "";
    bubble.append(el("p", { class: "muted" }, "error: " + error.message));
    state.history.pop();
  } finally {
    bubble.classList.remove("streaming");
    $("#send").disabled = false;
  }
}

// --- memories ----------------------------------------------------------------------------------
async function loadMemories(query) {
  const list = $("#memory-list");
  try {
    const data = query
      ? await api("/v1/memories/search", { method: "POST", body: JSON.stringify({ query, limit: 50 }) })
      : await api("/v1/memories?limit=200");
    $("#memory-count").textContent = query ? `${data.results.length} matching “${query}”`
      : `${data.total ?? data.results.length} memories` + (data.total > data.results.length ? ` (showing ${data.results.length})` : "");
    list.replaceChildren(...data.results.map(memoryItem));
  } catch (error) { notice(error.message); }
}

function memoryItem(memory) {
  const text = el("span", { class: "text" }, memory.memory);
  const meta = el("span", { class: "meta" }, [memory.category, memory.created_at && memory.created_at.slice(0, 16).replace("T", " ")]
    .filter(Boolean).join(" · ") + (memory.score != null ? ` · score ${memory.score.toFixed(2)}` : ""));
  const item = el("li", { "data-memory-id": String(memory.id) }, text, meta);
  const edit = el("button", { class: "link", title: "edit" }, "Edit");
  const remove = el("button", { class: "danger", title: "delete" }, "Delete");
  const history = el("button", { class: "link", title: "history" }, "History");
  edit.addEventListener("click", () => {
    const field = el("input", { class: "edit", value: memory.memory });
    const save = el("button", {}, "Save");
    const cancel = el("button", { class: "secondary" }, "Cancel");
    item.replaceChildren(field, save, cancel);
    field.focus();
    cancel.addEventListener("click", () => item.replaceWith(memoryItem(memory)));
    const submit = async () => {
      try {
        const updated = await api(`/v1/memories/${memory.id}`, { method: "PUT", body: JSON.stringify({ text: field.value }) });
        item.replaceWith(memoryItem(updated));
      } catch (error) { notice(error.message); }
    };
    save.addEventListener("click", submit);
    field.addEventListener("keydown", (event) => { if (event.key === "Enter") submit(); });
  });
  remove.addEventListener("click", async () => {
    try {
      await api(`/v1/memories/${memory.id}`, { method: "DELETE" });
      item.remove();
      notice("");
    } catch (error) { notice(error.message); }
  });
  history.addEventListener("click", async () => {
    try {
      const data = await api(`/v1/memories/${memory.id}/history`);
      item.querySelector(".history")?.remove();
      item.append(el("ol", { class: "history" }, ...data.results.map((c) =>
        el("li", {}, `${c.created_at.replace("T", " ").slice(0, 19)} ${c.event} by ${c.actor}: ${c.new_memory ?? c.old_memory}`))));
    } catch (error) { notice(error.message); }
  });
  item.append(history, edit, remove);
  return item;
}

async function addMemory() {
  const input = $("#memory-new");
  const text = input.value.trim();
  if (!text) return;
  try {
    const data = await api("/v1/memories", { method: "POST", body: JSON.stringify({ messages: text }) });
    const stored = data.results.filter((r) => r.event === "ADD");
    notice(stored.length ? "" : "nothing new to remember in that text (duplicate, or no fact about you)", "info");
    input.value = "";
    loadMemories("");
  } catch (error) { notice(error.message); }
}

// --- documents ---------------------------------------------------------------------------------
function readFile() {
  const file = $("#document-file").files[0];
  if (!file) return;
  if (!$("#document-title").value) $("#document-title").value = file.name;
  file.text().then((text) => { $("#document-text").value = text; });
}

async function memorize() {
  const text = $("#document-text").value;
  if (!text.trim()) { notice("paste a text or choose a file first"); return; }
  const progress = $("#document-progress");
  const status = $("#document-status");
  $("#document-submit").disabled = true;
  progress.hidden = false;
  progress.value = 0;
  try {
    const document_ = await api("/v1/documents", { method: "POST", body: JSON.stringify({ text, title: $("#document-title").value || null }) });
    status.textContent = `${document_.title}: ${document_.tokens} tokens in ${document_.segments} segments`;
    const response = await fetch(`/v1/documents/${document_.id}/events`, { headers: headers(false) });
    if (!response.ok) throw await failure(response);
    for await (const row of events(response)) {
      progress.value = row.progress ?? 0;
      status.textContent = `${row.title}: ${row.status} ${row.done}/${row.segments} segments`;
      progress.dataset.status = row.status;
      if (row.error) notice(row.error);
    }
    $("#document-text").value = "";
    loadDocuments();
  } catch (error) { notice(error.message); }
  finally { $("#document-submit").disabled = !state.info.documents; }
}

async function loadDocuments() {
  if (!state.info || !state.info.documents) return;
  try {
    const data = await api("/v1/documents");
    $("#document-list").replaceChildren(...data.results.map((d) => {
      const remove = el("button", { class: "danger" }, "Delete");
      const item = el("li", { "data-document-id": d.id }, el("span", { class: "text" }, d.title),
        el("span", { class: "meta" }, `${d.status} · ${d.tokens} tokens · ${Math.round(100 * d.progress)}%`), remove);
      remove.addEventListener("click", async () => {
        try { await api(`/v1/documents/${d.id}`, { method: "DELETE" }); item.remove(); } catch (error) { notice(error.message); }
      });
      return item;
    }));
  } catch (error) { notice(error.message); }
}

async function searchDocuments() {
  const query = $("#document-query").value.trim();
  if (!query) return;
  try {
    const data = await api(`/v1/documents/search?query=${encodeURIComponent(query)}&limit=10`);
    $("#document-hits").replaceChildren(...(data.results.length ? data.results.map((h) =>
      el("li", {}, el("b", {}, h.title || h.document_id), ` · token ${h.position} · …${h.context}`)) : [el("li", { class: "muted" }, "not found")]));
  } catch (error) { notice(error.message); }
}

// --- compare (human evaluation) ------------------------------------------------------------------
async function compare() {
  const prompt = $("#compare-prompt").value.trim();
  if (!prompt) return;
  const button = $("#compare-submit");
  button.disabled = true;
  button.textContent = "Both are answering…";
  try {
    const comparison = await api("/v1/eval/comparisons", { method: "POST", body: JSON.stringify({ prompt }) });
    state.comparison = comparison;
    for (const slot of ["A", "B"]) {
      const card = $(`#answer-${slot}`);
      card.classList.remove("winner");
      card.querySelector(".who")?.remove();
      card.querySelector(".text").textContent = comparison.answers[slot] || "(empty answer)";
    }
    for (const b of document.querySelectorAll("[data-vote]")) b.disabled = false;
    $("#vote-result").hidden = true;
    $("#comparison").hidden = false;
  } catch (error) { notice(error.message); }
  finally { button.disabled = false; button.textContent = "Ask both"; }
}

async function vote(choice) {
  if (!state.comparison) return;
  for (const b of document.querySelectorAll("[data-vote]")) b.disabled = true;
  try {
    const result = await api(`/v1/eval/comparisons/${state.comparison.id}/vote`, { method: "POST", body: JSON.stringify({ choice }) });
    for (const slot of ["A", "B"]) {
      const card = $(`#answer-${slot}`);
      card.append(el("span", { class: "who" }, result.contenders[slot]));
      card.classList.toggle("winner", choice === slot);
    }
    const line = $("#vote-result");
    line.textContent = choice === "tie" ? "Recorded: a tie." : `Recorded: ${result.winner} wins.`;
    line.hidden = false;
    loadSummary();
  } catch (error) { notice(error.message); }
}

function percent(x) { return `${Math.round(100 * x)}%`; }

async function loadSummary() {
  try {
    const summary = await api("/v1/eval/summary");
    $("#summary-table tbody").replaceChildren(...summary.contenders.map((c) => el("tr", {},
      el("td", {}, c.contender), el("td", {}, String(c.n)), el("td", {}, String(c.wins)), el("td", {}, String(c.ties)),
      el("td", {}, String(c.losses)), el("td", {}, `${percent(c.win_rate)} [${percent(c.ci_low)}–${percent(c.ci_high)}]`))));
  } catch (error) { notice(error.message); }
}

// --- report ------------------------------------------------------------------------------------
async function loadReport() {
  try {
    const report = await api("/v1/report");
    $("#report-title").textContent = report.title || "Evaluation report";
    $("#report-meta").textContent = report.available ? [report.created && `created ${report.created}`, report.command]
      .filter(Boolean).join(" · ") : "no report folder: start the server with --report DIR (e.g. docs/results/eval-quick)";
    $("#report-markdown").textContent = report.markdown || "";
    const plots = $("#plots");
    plots.replaceChildren();
    for (const plot of report.plots) {
      const response = await fetch(plot.url, { headers: headers(false) });
      if (!response.ok) continue;
      const image = el("img", { alt: plot.name, src: URL.createObjectURL(await response.blob()) });
      plots.append(el("figure", {}, image, el("figcaption", {}, plot.name)));
    }
    const human = report.human.contenders || [];
    $("#report-human tbody").replaceChildren(...(human.length ? human.map((c) => el("tr", {}, el("td", {}, c.mechanism),
      el("td", {}, String(c.n)), el("td", {}, `${percent(c.win_rate)} [${percent(c.ci_low)}–${percent(c.ci_high)}]`)))
      : [el("tr", {}, el("td", { colspan: "3", class: "muted" }, "no votes yet (Compare tab)"))]));
  } catch (error) { notice(error.message); }
}

// --- API ---------------------------------------------------------------------------------------
async function loadApi() {
  $("#api-base").textContent = location.origin + "/v1";
  $("#mcp-url").textContent = location.origin + "/mcp";
  try {
    const schema = await api("/openapi.json");
    const rows = [];
    for (const [path, operations] of Object.entries(schema.paths)) {
      for (const [method, operation] of Object.entries(operations)) {
        rows.push(el("tr", {}, el("td", {}, el("code", {}, method.toUpperCase())), el("td", {}, el("code", {}, path)),
          el("td", {}, operation.summary || "")));
      }
    }
    $("#api-table tbody").replaceChildren(...rows);
  } catch (error) { notice(error.message); }
}

start();
