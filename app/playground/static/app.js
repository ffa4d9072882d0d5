// The agentchat playground: plain DOM, no build step, nothing fetched from anywhere but this server.
//
// Model output is untrusted. Every piece of it reaches the page through textContent or
// createElement; nothing here ever assigns innerHTML, and links are kept only for http(s) URLs.
"use strict";

const KEY_STORAGE = "agentchat.apiKey";
const CONVERSATION_PAGE = 30;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ROOT = "00000000-0000-0000-0000-000000000000"; // parent_message_id of an edited first message

const els = {};

const state = {
  key: null,
  conversationId: null,
  conversationAgent: null, // the agent the open conversation is bound to, once known
  agents: null, // GET /agents: the agents this key may use (null until loaded)
  nextCursor: null,
  stream: null, // the AbortController of the answer being streamed
  running: 0, // turns streaming into this page (a queued one too): branch controls wait for them
  pickedBranch: false, // the thread shows a branch picked with a switcher, not the latest one
  viewTicket: 0, // bumps whenever the thread shows something else, so late loads are dropped
};

// ---------------------------------------------------------------- DOM helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function relativeTime(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
  const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return "just now";
}

// Keep the thread scrolled to the bottom while it grows, unless the reader scrolled up.
function keepPinned(change) {
  const box = els.messages;
  const pinned = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  change();
  if (pinned) box.scrollTop = box.scrollHeight;
}

function scrollToBottom() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// ---------------------------------------------------------------- Markdown (a safe subset)

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const LIST_ITEM = /^(\s*)(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;
const TABLE_DIVIDER = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

const INLINE = new RegExp(
  [
    /(?<ticks>`+)(?<code>[^`]|[^`][\s\S]*?[^`])\k<ticks>(?!`)/.source,
    /\[(?<label>[^\]\n]+)\]\((?<href>[^()\s]+)\)/.source,
    /\*\*(?<strong>\S(?:[\s\S]*?\S)?)\*\*/.source,
    /~~(?<del>\S(?:[\s\S]*?\S)?)~~/.source,
    /(?<![\w*])\*(?<em>[^\s*](?:[\s\S]*?[^\s*])?)\*(?![\w*])/.source,
    /(?<!\w)_(?<em2>[^\s_](?:[\s\S]*?[^\s_])?)_(?!\w)/.source,
    /(?<url>https?:\/\/[^\s<>()[\]]*[^\s<>()[\].,;:!?'"*_~])/.source,
  ].join("|"),
  "g",
);

function isBlank(line) {
  return line.trim() === "";
}

function listMarker(line) {
  const match = LIST_ITEM.exec(line);
  if (!match) return null;
  const [, indent, bullet, number, content] = match;
  return {
    indent: indent.length,
    ordered: !bullet,
    start: number ? Number(number) : 1,
    content,
    contentIndent: match[0].length - content.length,
  };
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || RULE.test(line) || listMarker(line) !== null;
}

function readFence(lines, start) {
  const open = FENCE.exec(lines[start]);
  if (!open) return null;
  const [, marker, lang] = open;
  const close = new RegExp(`^ {0,3}\\${marker[0]}{${marker.length},}\\s*$`);
  const body = [];
  let i = start + 1;
  // An unclosed fence runs to the end: that is what a code block looks like while it streams in.
  while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
  return { block: { type: "code", lang, text: body.join("\n") }, next: i + 1 };
}

function readHeading(lines, start) {
  const match = HEADING.exec(lines[start]);
  return match && { block: { type: "heading", level: match[1].length, text: match[2] }, next: start + 1 };
}

function readRule(lines, start) {
  return RULE.test(lines[start]) ? { block: { type: "rule" }, next: start + 1 } : null;
}

function readQuote(lines, start) {
  const body = [];
  let i = start;
  for (let match; i < lines.length && (match = QUOTE.exec(lines[i])); i++) body.push(match[1]);
  return body.length ? { block: { type: "quote", children: parseBlocks(body.join("\n")) }, next: i } : null;
}

function splitRow(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim());
}

function readTable(lines, start) {
  if (!lines[start].includes("|") || start + 1 >= lines.length || !TABLE_DIVIDER.test(lines[start + 1])) return null;
  const rows = [];
  let i = start + 2;
  while (i < lines.length && lines[i].includes("|") && !isBlank(lines[i])) rows.push(splitRow(lines[i++]));
  return { block: { type: "table", head: splitRow(lines[start]), rows }, next: i };
}

function nextNonBlank(lines, from) {
  let i = from;
  while (i < lines.length && isBlank(lines[i])) i++;
  return i;
}

function readList(lines, start) {
  const first = listMarker(lines[start]);
  if (!first) return null;
  const isSibling = (marker) => marker && marker.ordered === first.ordered && marker.indent <= first.indent + 1;
  const items = [];
  let i = start;
  while (i < lines.length) {
    const line = lines[i];
    const marker = listMarker(line);
    if (isSibling(marker)) {
      items.push([marker.content]);
    } else if (isBlank(line)) {
      const next = nextNonBlank(lines, i);
      const continues = next < lines.length && (isSibling(listMarker(lines[next])) || /^\s/.test(lines[next]));
      if (!continues) break;
      items.at(-1).push("");
    } else if (/^\s/.test(line) || !startsBlock(line)) {
      // Indented lines (nested lists, more paragraphs) belong to the item; so does lazy wrapped text.
      const indent = line.length - line.trimStart().length;
      items.at(-1).push(line.slice(Math.min(indent, first.contentIndent)));
    } else {
      break;
    }
    i++;
  }
  const children = items.map((item) => parseBlocks(item.join("\n")));
  return { block: { type: "list", ordered: first.ordered, start: first.start, items: children }, next: i };
}

function readParagraph(lines, start) {
  const body = [lines[start]];
  let i = start + 1;
  while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) body.push(lines[i++]);
  return { block: { type: "paragraph", text: body.join("\n").trim() }, next: i };
}

const BLOCK_READERS = [readFence, readHeading, readRule, readQuote, readTable, readList, readParagraph];

function parseBlocks(source) {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    if (isBlank(lines[i])) {
      i++;
      continue;
    }
    for (const read of BLOCK_READERS) {
      const found = read(lines, i);
      if (found) {
        blocks.push(found.block);
        i = found.next;
        break;
      }
    }
  }
  return blocks;
}

function safeUrl(href) {
  try {
    const url = new URL(href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null; // relative or malformed: not a link we will follow
  }
}

function appendTextWithBreaks(parent, text) {
  text.split("\n").forEach((part, index) => {
    if (index > 0) parent.append(el("br"));
    if (part) parent.append(part);
  });
}

// A link the model wrote is shown as its full address (a label can say anything), and opens only
// when the reader confirms that address: model output may carry injected, look-alike links.
function linkNode(labelText, href, original) {
  const url = safeUrl(href);
  if (!url) return document.createTextNode(original);
  const wrap = el("span", "model-link");
  if (labelText !== href) {
    appendInline(wrap, labelText);
    wrap.append(" ");
  }
  const link = wrap.appendChild(el("a", "model-link-url", url));
  link.href = url;
  link.target = "_blank";
  link.rel = "noopener noreferrer nofollow";
  link.addEventListener("click", (event) => {
    if (!window.confirm(`Open this address the model wrote?\n\n${url}`)) event.preventDefault();
  });
  return wrap;
}

function inlineNode(match) {
  const g = match.groups;
  if (g.code !== undefined) return el("code", null, g.code);
  if (g.label !== undefined) return linkNode(g.label, g.href, match[0]);
  if (g.url !== undefined) return linkNode(g.url, g.url, match[0]);
  const [tag, inner] = g.strong !== undefined ? ["strong", g.strong] : g.del !== undefined ? ["del", g.del] : ["em", g.em ?? g.em2];
  const node = el(tag);
  appendInline(node, inner);
  return node;
}

function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    appendTextWithBreaks(parent, text.slice(last, match.index));
    parent.append(inlineNode(match));
    last = match.index + match[0].length;
  }
  appendTextWithBreaks(parent, text.slice(last));
}

function codeBlockNode(block) {
  const wrapper = el("div", "code-block");
  const header = el("div", "code-header");
  header.append(el("span", "code-lang", block.lang || "text"));
  if (navigator.clipboard) header.append(el("button", "copy-button", "Copy"));
  const pre = el("pre");
  pre.append(el("code", null, block.text));
  wrapper.append(header, pre);
  return wrapper;
}

function listNode(block) {
  const list = el(block.ordered ? "ol" : "ul");
  if (block.ordered && block.start !== 1) list.start = block.start;
  for (const children of block.items) {
    const item = el("li");
    // A one-paragraph item holds its text directly: a tight list, as people write them.
    if (children.length === 1 && children[0].type === "paragraph") appendInline(item, children[0].text);
    else item.append(...children.map(blockNode));
    list.append(item);
  }
  return list;
}

function tableNode(block) {
  const wrapper = el("div", "table-scroll");
  const table = el("table");
  const headRow = el("tr");
  for (const cell of block.head) appendInline(headRow.appendChild(el("th")), cell);
  table.appendChild(el("thead")).append(headRow);
  const body = table.appendChild(el("tbody"));
  for (const row of block.rows) {
    const tr = body.appendChild(el("tr"));
    for (const cell of row) appendInline(tr.appendChild(el("td")), cell);
  }
  wrapper.append(table);
  return wrapper;
}

function blockNode(block) {
  switch (block.type) {
    case "code":
      return codeBlockNode(block);
    case "heading": {
      const heading = el(`h${Math.min(block.level + 2, 6)}`);
      appendInline(heading, block.text);
      return heading;
    }
    case "rule":
      return el("hr");
    case "quote": {
      const quote = el("blockquote");
      quote.append(...block.children.map(blockNode));
      return quote;
    }
    case "table":
      return tableNode(block);
    case "list":
      return listNode(block);
    default: {
      const paragraph = el("p");
      appendInline(paragraph, block.text);
      return paragraph;
    }
  }
}

function renderMarkdown(container, source) {
  container.replaceChildren(...parseBlocks(source).map(blockNode));
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(message, { type = "error", requestId = null, status = 0 } = {}) {
    super(message);
    this.name = "ApiError";
    this.type = type;
    this.requestId = requestId;
    this.status = status;
  }

  static fromEnvelope(error, fallbackRequestId = null, status = 0) {
    return new ApiError(error.message || "Something went wrong.", {
      type: error.type,
      requestId: error.request_id || fallbackRequestId,
      status,
    });
  }
}

async function errorFromResponse(response) {
  const requestId = response.headers.get("X-Request-ID");
  const body = await response.json().catch(() => null);
  if (body && body.error && typeof body.error.message === "string") {
    return ApiError.fromEnvelope(body.error, requestId, response.status);
  }
  const message = `The server answered ${response.status} ${response.statusText}.`.replace(" .", ".");
  return new ApiError(message, { requestId, status: response.status });
}

async function request(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...options.headers };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Could not reach the server. Check the connection and try again.", { type: "network_error" });
  }
  if (response.ok) return response;
  const error = await errorFromResponse(response);
  if (response.status === 401) showKeyView(error);
  throw error;
}

async function getJSON(path) {
  return (await request(path)).json();
}

// ---------------------------------------------------------------- Server-Sent Events over fetch

// EventSource cannot POST, so the stream is parsed here: blocks of `field: value` lines ended by a
// blank line; lines starting with ":" (the server's pings) are comments.
class SSEParser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "message";
    this.data = [];
  }

  push(chunk) {
    this.buffer += chunk;
    const lines = this.buffer.split("\n");
    this.buffer = lines.pop();
    const events = [];
    for (const raw of lines) {
      const event = this.line(raw.endsWith("\r") ? raw.slice(0, -1) : raw);
      if (event) events.push(event);
    }
    return events;
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    return null;
  }

  dispatch() {
    const event = this.data.length ? { event: this.event, data: JSON.parse(this.data.join("\n")) } : null;
    this.reset();
    return event;
  }
}

async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      yield* parser.push(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------- messages on screen

function errorNotice(error) {
  const box = el("div", "notice error");
  box.setAttribute("role", "alert");
  box.append(el("p", "notice-message", error.message));
  if (error.requestId || (error.type && error.type !== "error")) {
    const details = el("p", "notice-details");
    if (error.type && error.type !== "error") details.append(el("span", "error-type", error.type));
    if (error.requestId) {
      const id = el("span", "request-id", "Request ID ");
      id.append(el("code", null, error.requestId));
      details.append(id);
    }
    box.append(details);
  }
  return box;
}

// What the page knows of each message on screen, for its branch controls: its id (an answer's from
// its `start` event, a user message's once the history lists it), the answer it follows, its siblings.
const messageMeta = new WeakMap();

function messageShell(role) {
  const article = el("article", `message ${role}`);
  article.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  if (role === "assistant") article.append(el("div", "avatar"));
  const body = article.appendChild(el("div", "message-body"));
  // Icon buttons named by aria-label: the message's own text stays all the text it holds.
  const actions = article.appendChild(el("div", "message-actions"));
  actions.hidden = true;
  messageMeta.set(article, { role, id: null, parentId: null, siblingIds: [], actions, editing: false });
  keepPinned(() => els.thread.append(article));
  return { article, body };
}

function appendUserMessage(text, attachments = []) {
  els.welcome.hidden = true;
  const { article, body } = messageShell("user");
  if (attachments.length) {
    const list = body.appendChild(el("ul", "message-attachments"));
    for (const file of attachments) list.append(attachmentChip(file, file.preview));
  }
  body.append(el("div", "user-text", text));
  Object.assign(messageMeta.get(article), { text, attachments });
  renderActions(article);
  return article;
}

// ---------------------------------------------------------------- attachments

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
let pending = []; // files attached to the next message: { id, filename, media_type, preview, chip, failed }

// An attachment as a chip: a thumbnail for an image (a data: URL, which the page's CSP allows), else its name.
// `preview` is a data URL already read (a file just attached); without one, an image's bytes are fetched.
function attachmentChip(file, preview) {
  const chip = el("li", "attachment");
  chip.title = file.filename;
  if (IMAGE_TYPES.includes(file.media_type)) {
    const img = chip.appendChild(el("img", "attachment-thumb"));
    img.alt = file.filename;
    if (preview) img.src = preview;
    else if (file.id) loadThumbnail(img, file.id);
  } else {
    chip.append(el("span", "attachment-kind", file.media_type === "application/pdf" ? "PDF" : "TXT"));
  }
  chip.append(el("span", "attachment-name", file.filename));
  return chip;
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function loadThumbnail(img, id) {
  try {
    const response = await request(`/files/${id}/content`);
    img.src = await readAsDataURL(await response.blob());
  } catch {
    img.replaceWith(el("span", "attachment-kind", "?")); // deleted since, or unreadable
  }
}

function renderTray() {
  els.attachmentTray.hidden = pending.length === 0;
}

async function attachFiles(files) {
  for (const file of files) {
    const entry = { id: null, filename: file.name || "pasted", media_type: file.type, preview: null, failed: false };
    pending.push(entry);
    if (IMAGE_TYPES.includes(file.type)) entry.preview = await readAsDataURL(file).catch(() => null);
    entry.chip = attachmentChip(entry, entry.preview);
    entry.chip.classList.add("uploading");
    const remove = entry.chip.appendChild(el("button", "attachment-remove", "×"));
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${entry.filename}`);
    remove.addEventListener("click", () => {
      pending = pending.filter((other) => other !== entry);
      entry.chip.remove();
      renderTray();
    });
    els.attachmentTray.append(entry.chip);
    renderTray();
    upload(entry, file);
  }
}

async function upload(entry, file) {
  const form = new FormData();
  form.append("file", file, entry.filename);
  try {
    const stored = await (await request("/files", { method: "POST", body: form })).json();
    Object.assign(entry, { id: stored.id, filename: stored.filename, media_type: stored.media_type });
    entry.chip.classList.remove("uploading");
  } catch (error) {
    entry.failed = true;
    entry.chip.classList.replace("uploading", "failed");
    entry.chip.title = error.message;
    entry.chip.append(el("span", "attachment-error", error.message));
  }
}

function takeAttachments() {
  const ready = pending.filter((entry) => entry.id && !entry.failed);
  pending = [];
  els.attachmentTray.replaceChildren();
  renderTray();
  return ready;
}

function formatJSON(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

class ToolCard {
  constructor(call) {
    this.root = el("details", "tool-card running");
    const summary = this.root.appendChild(el("summary"));
    summary.append(el("span", "tool-icon"), el("span", "tool-name", call.name));
    this.status = summary.appendChild(el("span", "tool-status", "running…"));
    this.root.append(this.section("Input", formatJSON(call.input ?? {})));
  }

  section(label, text) {
    const section = el("div", "tool-section");
    const pre = el("pre");
    pre.append(el("code", null, text));
    section.append(el("div", "tool-label", label), pre);
    return section;
  }

  setResult(content, isError) {
    this.root.classList.remove("running");
    this.root.classList.toggle("failed", Boolean(isError));
    this.status.textContent = isError ? "error" : "done";
    if (content !== null && content !== undefined) {
      this.root.append(this.section(isError ? "Error" : "Result", formatJSON(content)));
    }
  }

  // A call of a gated tool: it waits for the reader's decision (an approval card says what it is).
  awaitApproval() {
    this.root.classList.remove("running");
    this.root.classList.add("awaiting");
    this.status.textContent = "needs approval";
  }

  settle() {
    if (this.root.classList.contains("running")) this.setResult(null, false);
  }
}

// One assistant answer: text segments with tool cards between them, as the events arrive.
class AnswerView {
  constructor() {
    els.welcome.hidden = true;
    const { article, body } = messageShell("assistant");
    this.article = article;
    this.body = body;
    this.segment = null;
    this.text = "";
    this.tools = new Map();
    this.frame = 0;
  }

  startStreaming() {
    this.article.classList.add("streaming");
    this.article.setAttribute("aria-busy", "true");
    renderActions(this.article);
  }

  // The answer's id, from its `start` event: what Regenerate and a later edit's parent name.
  setMessageId(id) {
    const meta = messageMeta.get(this.article);
    if (meta.id === id) return;
    Object.assign(meta, { id, siblingIds: [id] });
    this.article.dataset.id = id;
  }

  // Sent while another turn ran: stored, and answered after the turns ahead of it.
  markQueued() {
    this.article.classList.add("queued");
    this.queuedNote = el("p", "message-note", "Queued: answered after the message before it.");
    keepPinned(() => this.body.append(this.queuedNote));
  }

  unqueue() {
    this.article.classList.remove("queued");
    if (this.queuedNote) this.queuedNote.remove();
    this.queuedNote = null;
  }

  appendText(text) {
    if (!this.segment) {
      this.segment = this.body.appendChild(el("div", "markdown"));
      this.text = "";
    }
    this.text += text;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = 0;
    if (this.segment) keepPinned(() => renderMarkdown(this.segment, this.text));
  }

  addTool(call) {
    this.render();
    this.segment = null;
    const card = new ToolCard(call);
    this.tools.set(call.id, card);
    keepPinned(() => this.body.append(card.root));
    return card;
  }

  setToolResult(result) {
    const card = this.tools.get(result.tool_use_id);
    if (card) {
      card.root.classList.remove("awaiting");
      card.setResult(result.content, result.is_error);
    }
  }

  // A pending call (an `approval_required` event, or a paused answer reloaded).
  awaitApproval(call) {
    this.pending = [...(this.pending || []), call];
    const card = this.tools.get(call.tool_use_id) || this.addTool({ id: call.tool_use_id, ...call });
    card.awaitApproval();
  }

  // The turn paused: one approval card per pending call, and the decisions continue this answer.
  askApprovals() {
    if (!this.pending || !this.pending.length) return;
    this.render();
    this.segment = null;
    const panel = new ApprovalPanel(this, this.pending);
    this.pending = [];
    keepPinned(() => this.body.append(panel.root));
  }

  // The continuation streams into this answer (the same message): after what is there already.
  resumeStreaming() {
    this.render();
    this.segment = null;
    this.startStreaming();
  }

  note(text) {
    keepPinned(() => this.body.append(el("p", "message-note", text)));
  }

  showError(error) {
    keepPinned(() => this.body.append(errorNotice(error)));
  }

  finish() {
    cancelAnimationFrame(this.frame);
    this.render();
    for (const card of this.tools.values()) card.settle();
    if (!this.body.hasChildNodes()) this.note("(no text)");
    this.article.classList.remove("streaming");
    this.article.removeAttribute("aria-busy");
    renderActions(this.article);
  }
}

// ---------------------------------------------------------------- approvals

let openApprovals = null; // the panel of a paused turn awaiting decisions, if one is on screen

class ApprovalCard {
  constructor(call, onDecided) {
    this.call = call;
    this.decision = null;
    this.root = el("section", "approval-card");
    this.root.dataset.toolUseId = call.tool_use_id;
    this.root.setAttribute("aria-label", `Approval needed: ${call.name}`);
    const head = this.root.appendChild(el("div", "approval-head"));
    this.badge = head.appendChild(el("span", "approval-badge", "Needs your approval"));
    head.append(el("span", "approval-name", call.name));
    this.args = this.root.appendChild(el("pre", "approval-args"));
    this.args.append(el("code", null, formatJSON(call.input ?? {})));
    this.editor = this.root.appendChild(el("textarea", "approval-editor"));
    this.editor.hidden = true;
    this.editor.spellcheck = false;
    this.editor.setAttribute("aria-label", `Arguments for ${call.name} (JSON)`);
    this.editor.value = formatJSON(call.input ?? {});
    this.problem = this.root.appendChild(el("p", "approval-problem"));
    this.problem.hidden = true;
    this.reason = this.root.appendChild(el("input", "approval-reason"));
    this.reason.type = "text";
    this.reason.maxLength = 2000;
    this.reason.placeholder = "Reason (optional; the model reads it if you deny)";
    this.reason.setAttribute("aria-label", `Reason for ${call.name}`);
    const actions = (this.actions = this.root.appendChild(el("div", "approval-actions")));
    this.approve = actions.appendChild(el("button", "primary-button approval-approve", "Approve"));
    this.deny = actions.appendChild(el("button", "ghost-button approval-deny", "Deny"));
    this.edit = actions.appendChild(el("button", "ghost-button approval-edit", "Edit"));
    for (const button of [this.approve, this.deny, this.edit]) button.type = "button";
    this.outcome = this.root.appendChild(el("p", "approval-outcome"));
    this.outcome.hidden = true;
    this.approve.addEventListener("click", () => this.decide(true, onDecided));
    this.deny.addEventListener("click", () => this.decide(false, onDecided));
    this.edit.addEventListener("click", () => this.toggleEditor());
  }

  toggleEditor() {
    const editing = this.editor.hidden;
    this.editor.hidden = !editing;
    this.args.hidden = editing;
    this.problem.hidden = true;
    this.edit.textContent = editing ? "Cancel edit" : "Edit";
    this.approve.textContent = editing ? "Approve edited" : "Approve";
    if (editing) this.editor.focus();
  }

  edited() {
    if (this.editor.hidden) return null;
    let value;
    try {
      value = JSON.parse(this.editor.value);
    } catch (error) {
      throw new Error(`The arguments are not valid JSON: ${error.message}`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new Error("The arguments must be a JSON object.");
    }
    return value;
  }

  decide(approve, onDecided) {
    let input = null;
    if (approve) {
      try {
        input = this.edited();
      } catch (error) {
        this.problem.textContent = error.message;
        this.problem.hidden = false;
        return;
      }
    }
    this.problem.hidden = true;
    const reason = this.reason.value.trim();
    this.decision = { tool_use_id: this.call.tool_use_id, approve };
    if (input) this.decision.input = input;
    if (reason) this.decision.reason = reason;
    this.root.classList.toggle("approved", approve);
    this.root.classList.toggle("denied", !approve);
    if (input) this.args.replaceChildren(el("code", null, formatJSON(input)));
    this.badge.textContent = approve ? "Approved" : "Denied";
    this.show(approve ? (input ? "Approved with edited arguments" : "Approved") : reason ? `Denied: ${reason}` : "Denied");
    onDecided();
  }

  show(text) {
    this.outcome.textContent = text;
    this.outcome.hidden = false;
  }

  // Locked: decided (or superseded), the card only says what happened; unlocked, it asks again.
  lock(locked) {
    this.actions.hidden = locked;
    this.reason.hidden = locked;
    if (locked && !this.editor.hidden) {
      this.editor.hidden = true;
      this.args.hidden = false;
    }
    if (!locked) {
      this.badge.textContent = "Needs your approval";
      this.args.replaceChildren(el("code", null, formatJSON(this.call.input ?? {})));
      this.edit.textContent = "Edit";
      this.approve.textContent = "Approve";
    }
  }
}

// The cards of one paused turn: once every pending call has a decision, they go together.
class ApprovalPanel {
  constructor(view, pending) {
    this.view = view;
    this.conversationId = state.conversationId;
    this.root = el("div", "approval-panel");
    this.cards = pending.map((call) => new ApprovalCard(call, () => this.maybeSubmit()));
    this.root.append(...this.cards.map((card) => card.root));
    this.error = null;
    if (openApprovals) openApprovals.close("Superseded.");
    openApprovals = this;
  }

  maybeSubmit() {
    for (const card of this.cards) if (card.decision) card.lock(true);
    if (this.cards.every((card) => card.decision)) this.submit();
  }

  async submit() {
    if (this.error) this.error.remove();
    const decisions = this.cards.map((card) => card.decision);
    if (openApprovals === this) openApprovals = null;
    const view = this.view;
    view.resumeStreaming();
    const controller = new AbortController();
    setStreaming(controller);
    turnRunning(1);
    try {
      await streamDecisions(view, this.conversationId, decisions, controller.signal);
    } catch (error) {
      if (error.name === "AbortError") view.note("Stopped.");
      else this.failed(error);
    } finally {
      view.finish();
      if (state.stream === controller) setStreaming(null);
      turnRunning(-1);
      refreshConversations();
    }
  }

  failed(error) {
    this.error = errorNotice(error);
    keepPinned(() => this.root.append(this.error));
    if (error.status === 409 || error.status === 404) return; // decided elsewhere, or gone: nothing to retry
    openApprovals = this;
    for (const card of this.cards) {
      card.decision = null;
      card.outcome.hidden = true;
      card.root.classList.remove("approved", "denied");
      card.lock(false);
    }
  }

  // A new message instead: the server denies the pending calls (the user sent a new message).
  close(text) {
    for (const card of this.cards) {
      card.lock(true);
      if (!card.decision) card.show(text);
    }
    if (openApprovals === this) openApprovals = null;
  }
}

async function streamDecisions(view, conversationId, decisions, signal) {
  const path = `conversations/${encodeURIComponent(conversationId)}/approvals`;
  await streamTurn(view, path, { decisions, stream: true }, signal);
}

const STOP_NOTES = {
  max_tokens: "Stopped at the length limit.",
  refusal: "The model declined to answer.",
};

function renderStoredAnswer(item) {
  const view = new AnswerView();
  for (const call of item.tool_calls || []) {
    const card = view.addTool(call);
    if (call.result !== null && call.result !== undefined) card.setResult(call.result, call.is_error);
  }
  if (item.content) view.appendText(item.content);
  if (item.status === "awaiting_approval") {
    for (const call of item.pending_approvals || []) view.awaitApproval(call);
    view.askApprovals();
  }
  if (item.status === "incomplete") view.note("Stopped.");
  else if (item.status === "in_progress") view.note("Still being written…");
  else if (STOP_NOTES[item.stop_reason]) view.note(STOP_NOTES[item.stop_reason]);
  if (item.status === "error") view.showError(ApiError.fromEnvelope(item.error || {}));
  view.finish();
  if (item.model) els.modelName.textContent = item.model;
  return view;
}

function renderHistory(items) {
  for (const item of items) {
    if (item.role === "user") placeInTree(appendUserMessage(item.content, item.attachments || []), item);
    else placeInTree(renderStoredAnswer(item).article, item);
  }
  els.welcome.hidden = items.length > 0;
  scrollToBottom();
}

// A history item's place in the conversation's tree, on its message (and its switcher, if it has siblings).
function placeInTree(article, item) {
  const meta = messageMeta.get(article);
  meta.role = item.role; // a `summary` item (a compaction) gets no branch controls
  meta.id = item.id;
  meta.parentId = item.parent_id || ROOT;
  meta.siblingIds = item.sibling_ids && item.sibling_ids.length ? item.sibling_ids : [item.id];
  article.dataset.id = item.id;
  renderActions(article);
}

function clearThread() {
  state.viewTicket++;
  state.pickedBranch = false;
  openApprovals = null;
  els.thread.replaceChildren();
  els.welcome.hidden = false;
}

// ---------------------------------------------------------------- conversations

function setConversation(id, agent = null) {
  state.conversationId = id;
  state.conversationAgent = agent;
  renderAgentBar();
  const url = id ? `#${id}` : location.pathname + location.search;
  history.replaceState(null, "", url);
  for (const button of els.conversationList.querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.id === id));
  }
}

function conversationItem(conversation) {
  const item = el("li");
  const button = item.appendChild(el("button", "conversation-link"));
  button.type = "button";
  button.dataset.id = conversation.id;
  button.title = conversation.title || "";
  button.setAttribute("aria-current", String(conversation.id === state.conversationId));
  button.append(el("span", "conversation-title", conversation.title || "Untitled"));
  const meta = button.appendChild(el("span", "conversation-meta"));
  const time = meta.appendChild(el("time", "conversation-time", relativeTime(conversation.updated_at)));
  time.dateTime = conversation.updated_at;
  if (conversation.agent) {
    const agent = meta.appendChild(el("span", "conversation-agent"));
    agent.append(el("span", "visually-hidden", "Agent: "), conversation.agent);
  }
  return item;
}

async function loadConversations({ more = false } = {}) {
  const params = new URLSearchParams({ limit: String(CONVERSATION_PAGE) });
  if (more && state.nextCursor) params.set("cursor", state.nextCursor);
  const page = await getJSON(`conversations?${params}`);
  const items = page.items.map(conversationItem);
  if (more) els.conversationList.append(...items);
  else els.conversationList.replaceChildren(...items);
  state.nextCursor = page.next_cursor;
  els.moreConversations.hidden = !page.next_cursor;
  els.conversationEmpty.hidden = els.conversationList.childElementCount > 0;
}

function refreshConversations() {
  loadConversations().catch(showSidebarError);
  loadMemories().catch(showMemoryError);
}

// ---------------------------------------------------------------- agents

// A new conversation starts with the agent picked here (the default one preselected) and stays
// bound to it: once a conversation exists, the bar only names its agent, it never offers a switch.
async function loadAgents() {
  const page = await getJSON("agents");
  state.agents = page.items;
  const options = page.items.map((agent) => {
    const option = el("option", null, agent.name);
    option.value = agent.name;
    option.selected = agent.default;
    return option;
  });
  els.agentSelect.replaceChildren(...options);
  els.agentError.hidden = true;
  renderAgentBar();
}

function describe(name) {
  const agent = (state.agents || []).find((a) => a.name === name);
  return agent ? agent.description : "";
}

function renderAgentBar() {
  const agents = state.agents || [];
  const picking = !state.conversationId && agents.length > 1;
  const fixed = state.conversationId ? state.conversationAgent : agents.length === 1 ? agents[0].name : null;
  els.agentPicker.hidden = !picking;
  els.agentSelect.disabled = Boolean(state.stream); // a first turn in flight: its agent is chosen
  els.agentCurrent.hidden = picking || !fixed;
  els.agentCurrentName.textContent = fixed || "";
  els.agentDescription.textContent = describe(picking ? els.agentSelect.value : fixed);
  els.agentBar.hidden = !picking && !fixed && els.agentError.hidden;
}

// The agent a new conversation asks for; none when the list is not known (the server's default).
function chosenAgent() {
  return state.agents && state.agents.length ? els.agentSelect.value : null;
}

function showAgentsError(error) {
  if (error.status === 401) return;
  els.agentError.replaceChildren(errorNotice(error));
  els.agentError.hidden = false;
  renderAgentBar();
}

function forgetAgents() {
  state.agents = null;
  els.agentSelect.replaceChildren();
  els.agentError.hidden = true;
  renderAgentBar();
}

// ---------------------------------------------------------------- memories

// Memories feed every later conversation of the key, so the reader sees them all, with where
// they came from, and can delete any (a memory written after reading web content is marked).
function memoryItem(memory) {
  const item = el("li", "memory");
  item.dataset.id = memory.id;
  item.append(el("span", "memory-text", memory.text));
  if (memory.untrusted_context) {
    const badge = item.appendChild(el("span", "memory-badge", "from web content"));
    badge.title = "Written in a turn that had read untrusted tool output: check it before relying on it.";
  }
  const forget = item.appendChild(el("button", "ghost-button memory-delete", "Forget"));
  forget.type = "button";
  forget.setAttribute("aria-label", `Forget: ${memory.text}`);
  forget.addEventListener("click", async () => {
    forget.disabled = true;
    try {
      await request(`memories/${encodeURIComponent(memory.id)}`, { method: "DELETE" });
      item.remove();
      els.memoryEmpty.hidden = els.memoryList.childElementCount > 0;
    } catch (error) {
      forget.disabled = false;
      showMemoryError(error);
    }
  });
  return item;
}

async function loadMemories() {
  const page = await getJSON("memories?limit=50");
  els.memoryList.replaceChildren(...page.items.map(memoryItem));
  els.memoryEmpty.hidden = page.items.length > 0;
}

function showMemoryError(error) {
  if (error.status === 401) return;
  const item = el("li");
  item.append(errorNotice(error));
  els.memoryList.replaceChildren(item);
}

function showSidebarError(error) {
  if (error.status === 401) return; // the key view already says so
  const item = el("li");
  item.append(errorNotice(error));
  els.conversationList.replaceChildren(item);
}

// The address names the branch shown when it is not the latest (`#<conversation>/<its last message>`),
// so a reload shows the same one.
function markBranch(leaf) {
  if (!state.conversationId) return;
  history.replaceState(null, "", leaf ? `#${state.conversationId}/${leaf}` : `#${state.conversationId}`);
}

async function openConversation(id, leaf = null) {
  stopStreaming();
  closeSidebar();
  clearThread();
  setConversation(id);
  const ticket = state.viewTicket;
  const path = `conversations/${encodeURIComponent(id)}`;
  const branch = (through) =>
    getJSON(through ? `${path}/messages?${new URLSearchParams({ leaf: through })}` : `${path}/messages`);
  try {
    const [conversation, page] = await Promise.all([
      getJSON(path),
      branch(leaf).catch((error) => (leaf && error.status === 404 ? branch(null) : Promise.reject(error))),
    ]);
    if (ticket !== state.viewTicket) return;
    state.conversationAgent = conversation.agent || null;
    renderAgentBar();
    renderHistory(page.items);
    if (leaf && page.items.some((item) => item.id === leaf)) {
      state.pickedBranch = true; // a message sent now continues this branch
      markBranch(leaf);
    }
  } catch (error) {
    if (ticket !== state.viewTicket) return;
    if (error.status === 404) setConversation(null);
    els.welcome.hidden = true;
    els.thread.append(errorNotice(error));
  }
}

function newChat() {
  stopStreaming();
  closeSidebar();
  clearThread();
  setConversation(null);
  els.modelName.textContent = ""; // the last answer's model: the next one may be another agent's
  els.messageInput.focus();
}

// ---------------------------------------------------------------- a turn

function setStreaming(controller) {
  state.stream = controller;
  // In a conversation, a message sent while a turn runs is queued: Send stays beside Stop.
  els.sendButton.hidden = Boolean(controller) && !state.conversationId;
  els.stopButton.hidden = !controller;
  renderAgentBar();
}

function stopStreaming() {
  if (state.stream) state.stream.abort();
}

function handleEvent(view, { event, data }) {
  switch (event) {
    case "queued":
      view.markQueued();
      return false;
    case "start":
      view.unqueue();
      if (data.message_id) view.setMessageId(data.message_id);
      if (!state.conversationId) {
        setConversation(data.conversation_id, data.agent || null);
        refreshConversations(); // it exists now: list it while the answer streams in
      } else if (data.agent) {
        state.conversationAgent = data.agent;
        renderAgentBar();
      }
      els.modelName.textContent = data.model || "";
      return false;
    case "delta":
      view.appendText(data.text);
      return false;
    case "tool_use":
      view.addTool(data);
      return false;
    case "tool_result":
      view.setToolResult(data);
      return false;
    case "approval_required":
      view.awaitApproval(data);
      return false;
    case "end":
      if (STOP_NOTES[data.stop_reason]) view.note(STOP_NOTES[data.stop_reason]);
      if (data.stop_reason === "awaiting_approval") view.askApprovals();
      return true;
    case "error":
      view.showError(ApiError.fromEnvelope(data.error || {}));
      return true;
    default:
      return false; // an event this page does not know yet
  }
}

// POST /chat, a regenerate or the approvals of a paused turn: each streams the same events into `view`.
async function streamTurn(view, path, body, signal) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal,
  });
  for await (const event of readEvents(response.body)) {
    if (handleEvent(view, event)) return;
  }
  throw new ApiError("The connection closed before the answer was complete.", {
    requestId: response.headers.get("X-Request-ID"),
  });
}

// A turn's branch controls wait while any turn streams into the page (a queued one too).
function turnRunning(delta) {
  state.running += delta;
  for (const article of els.thread.querySelectorAll(".message")) renderActions(article);
}

async function runTurn(view, path, body) {
  view.startStreaming();
  const controller = new AbortController();
  if (!state.stream) setStreaming(controller); // else Stop stays with the turn that runs
  turnRunning(1);
  try {
    await streamTurn(view, path, body, controller.signal);
  } catch (error) {
    if (error.name === "AbortError") view.note("Stopped.");
    else view.showError(error);
  } finally {
    view.finish();
    if (state.stream === controller) setStreaming(null);
    turnRunning(-1);
    refreshConversations();
  }
}

async function sendMessage(text, attachments = []) {
  const body = { message: text, stream: true };
  if (attachments.length) body.attachments = attachments.map((file) => file.id);
  if (state.conversationId) {
    body.conversation_id = state.conversationId;
    // On a branch picked with a switcher the message continues that branch; else it goes after the
    // latest message, and while a turn runs it waits its turn (a `queued` event).
    const parent = state.pickedBranch && !state.running ? lastAnswerId() : null;
    if (parent) body.parent_message_id = parent;
    else body.multitask = "enqueue";
  } else if (chosenAgent()) body.agent = chosenAgent(); // a continued conversation keeps its own
  state.pickedBranch = false; // the new message is the latest now
  markBranch(null);
  if (openApprovals) openApprovals.close("Not decided: your new message denies it.");
  appendUserMessage(text, attachments);
  await runTurn(new AnswerView(), "chat", body);
}

// ---------------------------------------------------------------- branches: regenerate, edit, switch

function actionButton(className, label, onClick) {
  const button = el("button", `message-action ${className}`);
  button.type = "button";
  button.title = label;
  button.setAttribute("aria-label", label);
  button.disabled = state.running > 0;
  button.addEventListener("click", onClick);
  return button;
}

// "‹ 2/3 ›": the other versions of this message (edits of it, or regenerated answers).
function siblingSwitcher(meta) {
  const ids = meta.siblingIds;
  const at = ids.indexOf(meta.id);
  const group = el("div", "sibling-switcher");
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Version ${at + 1} of ${ids.length}`);
  const previous = actionButton("sibling-previous", "Previous version", () => showBranch(ids[at - 1], "previous"));
  const next = actionButton("sibling-next", "Next version", () => showBranch(ids[at + 1], "next"));
  previous.disabled ||= at <= 0;
  next.disabled ||= at >= ids.length - 1;
  group.append(previous, el("span", "sibling-count", `${at + 1}/${ids.length}`), next);
  return group;
}

function renderActions(article) {
  const meta = messageMeta.get(article);
  if (!meta) return;
  const controls = [];
  if (meta.id && meta.siblingIds.length > 1) controls.push(siblingSwitcher(meta));
  if (meta.role === "assistant" && meta.id && state.conversationId) {
    controls.push(actionButton("regenerate", "Regenerate", () => regenerate(article)));
  } else if (meta.role === "user" && state.conversationId) {
    controls.push(actionButton("edit", "Edit", () => startEdit(article)));
  }
  meta.actions.replaceChildren(...controls);
  meta.actions.hidden = !controls.length || meta.editing || article.classList.contains("streaming");
}

function answerArticles() {
  return [...els.thread.querySelectorAll(".message.assistant")].filter((article) => {
    const meta = messageMeta.get(article);
    return meta.role === "assistant" && meta.id;
  });
}

function lastAnswerId() {
  const last = answerArticles().at(-1);
  return last ? messageMeta.get(last).id : null;
}

// The answer a user message follows: an edit of it goes below that answer (ROOT: a new first message).
function editParent(article) {
  const meta = messageMeta.get(article);
  if (meta.id) return meta.parentId; // listed by the history: its parent is known
  const before = answerArticles().filter(
    (answer) => answer.compareDocumentPosition(article) & Node.DOCUMENT_POSITION_FOLLOWING,
  );
  return before.length ? messageMeta.get(before.at(-1)).id : ROOT;
}

// A new version replaces this message and what follows it on screen (the old ones stay, as siblings).
function cutThreadAt(article) {
  while (article.nextSibling) article.nextSibling.remove();
  article.remove();
  if (openApprovals && !openApprovals.view.article.isConnected) openApprovals = null;
  state.pickedBranch = false; // what comes next is the conversation's latest message
  markBranch(null);
}

// Once a new version is stored: its id and siblings, and those of the user message it answers.
async function placeNewVersion(view, ticket) {
  const meta = messageMeta.get(view.article);
  if (!meta.id || ticket !== state.viewTicket) return;
  const path = `conversations/${encodeURIComponent(state.conversationId)}/messages`;
  const page = await getJSON(`${path}?${new URLSearchParams({ leaf: meta.id })}`);
  if (ticket !== state.viewTicket) return;
  const at = page.items.findIndex((item) => item.id === meta.id);
  if (at < 0) return;
  placeInTree(view.article, page.items[at]);
  const user = page.items.slice(0, at).findLast((item) => item.role === "user");
  let asked = view.article.previousElementSibling;
  while (asked && !asked.classList.contains("user")) asked = asked.previousElementSibling;
  if (user && asked && [null, user.id].includes(messageMeta.get(asked).id)) placeInTree(asked, user);
}

async function regenerate(article) {
  const meta = messageMeta.get(article);
  if (state.running || !meta.id || !state.conversationId) return;
  const ticket = state.viewTicket;
  const conversation = encodeURIComponent(state.conversationId);
  const path = `conversations/${conversation}/messages/${encodeURIComponent(meta.id)}/regenerate`;
  cutThreadAt(article);
  const view = new AnswerView();
  await runTurn(view, path, { stream: true });
  await placeNewVersion(view, ticket).catch(() => {}); // without it, only the switcher is missing
}

function startEdit(article) {
  const meta = messageMeta.get(article);
  if (state.running || meta.editing) return;
  meta.editing = true;
  article.classList.add("editing");
  const text = article.querySelector(".user-text");
  text.hidden = true;
  const form = el("form", "message-editor");
  const input = form.appendChild(el("textarea", "message-editor-input"));
  input.value = meta.text;
  input.rows = Math.min(10, meta.text.split("\n").length + 1);
  input.setAttribute("aria-label", "Edited text");
  const buttons = form.appendChild(el("div", "message-editor-actions"));
  const cancel = buttons.appendChild(el("button", "ghost-button", "Cancel"));
  cancel.type = "button";
  buttons.appendChild(el("button", "primary-button", "Save")).type = "submit";
  const close = () => {
    form.remove();
    text.hidden = false;
    meta.editing = false;
    article.classList.remove("editing");
    renderActions(article);
  };
  cancel.addEventListener("click", close);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const edited = input.value.trim();
    if (!edited || state.running) return;
    close();
    submitEdit(article, edited);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      close();
    }
  });
  text.after(form);
  renderActions(article);
  input.focus();
}

// The edited message goes below the answer before the original (with the original's attachments):
// a new branch, whose answer streams in where the old thread was.
async function submitEdit(article, text) {
  const meta = messageMeta.get(article);
  const parent = editParent(article);
  const attachments = meta.attachments || [];
  const ticket = state.viewTicket;
  if (openApprovals) openApprovals.close("Not decided: your edit denies it.");
  cutThreadAt(article);
  appendUserMessage(text, attachments);
  const body = { message: text, stream: true, conversation_id: state.conversationId, parent_message_id: parent };
  if (attachments.length) body.attachments = attachments.map((file) => file.id);
  const view = new AnswerView();
  await runTurn(view, "chat", body);
  await placeNewVersion(view, ticket).catch(() => {});
}

// Another version of a message: the thread shows the branch through it, down to its latest answer.
async function showBranch(messageId, focus) {
  if (state.running || !state.conversationId) return;
  const ticket = state.viewTicket;
  const path = `conversations/${encodeURIComponent(state.conversationId)}/messages`;
  try {
    const page = await getJSON(`${path}?${new URLSearchParams({ leaf: messageId })}`);
    if (ticket !== state.viewTicket) return;
    clearThread();
    renderHistory(page.items);
    state.pickedBranch = true;
    markBranch(page.leaf_id || messageId);
    const shown = els.thread.querySelector(`.message[data-id="${CSS.escape(messageId)}"]`);
    if (!shown) return;
    shown.scrollIntoView({ block: "nearest" });
    const button = shown.querySelector(`.sibling-${focus}`);
    (button && !button.disabled ? button : shown.querySelector(".sibling-switcher button:not(:disabled)"))?.focus();
  } catch (error) {
    if (ticket === state.viewTicket && error.status !== 401) keepPinned(() => els.thread.append(errorNotice(error)));
  }
}

// ---------------------------------------------------------------- key and views

function showKeyView(error) {
  stopStreaming();
  state.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  forgetAgents(); // another key may use other agents
  els.chatView.hidden = true;
  els.forgetKey.hidden = true;
  els.menuButton.hidden = true;
  els.keyView.hidden = false;
  els.keyError.hidden = !error;
  els.keyError.replaceChildren();
  if (error) els.keyError.append(errorNotice(error));
  els.keyInput.value = "";
  els.keyInput.focus();
}

function showChatView() {
  els.keyView.hidden = true;
  els.chatView.hidden = false;
  els.forgetKey.hidden = false;
  els.menuButton.hidden = false;
}

async function connect(key) {
  state.key = key;
  try {
    await loadConversations();
  } catch (error) {
    if (error.status !== 401) showKeyView(error);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  showChatView();
  loadAgents().catch(showAgentsError);
  loadMemories().catch(showMemoryError);
  const [id, leaf] = location.hash.slice(1).split("/");
  if (UUID.test(id)) await openConversation(id, UUID.test(leaf || "") ? leaf : null);
  else newChat();
}

// A key handed over as `/#key=<key>` (by a set-up script, say) connects without typing it. Fragments are
// never sent to the server; the address bar drops it at once, so history and bookmarks never hold it.
function keyFromFragment() {
  const match = /^#key=([^&#]+)$/.exec(location.hash);
  if (!match) return null;
  history.replaceState(null, "", location.pathname + location.search);
  try {
    return decodeURIComponent(match[1]).trim() || null;
  } catch {
    return null; // malformed percent-encoding: ask for the key instead
  }
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  els.menuButton.setAttribute("aria-expanded", "false");
  els.scrim.hidden = true;
}

function toggleSidebar() {
  const open = document.body.classList.toggle("sidebar-open");
  els.menuButton.setAttribute("aria-expanded", String(open));
  els.scrim.hidden = !open;
}

function autosize() {
  const input = els.messageInput;
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

function submitMessage() {
  const uploading = pending.some((entry) => !entry.id && !entry.failed);
  const attached = pending.some((entry) => entry.id);
  let text = els.messageInput.value.trim();
  // A first turn in flight has no conversation yet to queue behind.
  if ((!text && !attached) || (state.stream && !state.conversationId) || uploading) return;
  text ||= "Please look at the attached files."; // a message has text; files alone get a line of it
  els.messageInput.value = "";
  autosize();
  sendMessage(text, takeAttachments());
}

async function copyCode(button) {
  const code = button.closest(".code-block").querySelector("code");
  await navigator.clipboard.writeText(code.textContent);
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

// ---------------------------------------------------------------- wiring

function bindEvents() {
  els.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = els.keyInput.value.trim();
    if (key) connect(key);
  });
  els.forgetKey.addEventListener("click", () => showKeyView(null));
  els.newChat.addEventListener("click", newChat);
  els.moreConversations.addEventListener("click", () => loadConversations({ more: true }).catch(showSidebarError));
  els.conversationList.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-id]");
    if (button) openConversation(button.dataset.id);
  });
  els.menuButton.addEventListener("click", toggleSidebar);
  els.scrim.addEventListener("click", closeSidebar);
  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitMessage();
  });
  els.stopButton.addEventListener("click", stopStreaming);
  els.attachButton.addEventListener("click", () => els.fileInput.click());
  els.fileInput.addEventListener("change", () => {
    attachFiles([...els.fileInput.files]);
    els.fileInput.value = "";
  });
  els.messageInput.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length) return; // text pastes as text
    event.preventDefault();
    attachFiles(files);
  });
  els.conversation.addEventListener("dragover", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    els.conversation.classList.add("dropping");
  });
  els.conversation.addEventListener("dragleave", () => els.conversation.classList.remove("dropping"));
  els.conversation.addEventListener("drop", (event) => {
    els.conversation.classList.remove("dropping");
    const files = [...(event.dataTransfer?.files || [])];
    if (!files.length) return;
    event.preventDefault();
    attachFiles(files);
  });
  els.agentSelect.addEventListener("change", renderAgentBar);
  els.messageInput.addEventListener("input", autosize);
  els.messageInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submitMessage();
    }
  });
  els.thread.addEventListener("click", (event) => {
    const button = event.target.closest(".copy-button");
    if (button) copyCode(button).catch(() => (button.textContent = "Copy failed"));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    stopStreaming();
    closeSidebar();
  });
}

function init() {
  const ids = [
    "key-view", "key-form", "key-input", "key-error", "chat-view", "menu-button", "forget-key", "model-name",
    "sidebar", "scrim", "new-chat", "conversation-list", "conversation-empty", "more-conversations",
    "memory-list", "memory-empty",
    "agent-bar", "agent-picker", "agent-select", "agent-current", "agent-current-name", "agent-description", "agent-error",
    "messages", "welcome", "thread", "composer", "message-input", "send-button", "stop-button",
    "conversation", "attachment-tray", "attach-button", "file-input",
  ];
  for (const id of ids) els[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
  bindEvents();
  const key = keyFromFragment() || sessionStorage.getItem(KEY_STORAGE);
  if (key) connect(key);
  else showKeyView(null);
}

init();
