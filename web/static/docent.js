/*
 * Docent chat client: no dependencies, one file.
 *
 *   <script src="https://docent.example/static/docent.js"></script>      classic script: window.Docent
 *   import Docent from "https://docent.example/static/docent.mjs";       ES module (same code)
 *
 *   const chat = Docent.connect({url: "wss://docent.example/ws/chat", token});
 *   chat.ask("What is our travel policy?", {mode: "auto", onSources, onDelta, onCitation, onEvent, onDone});
 *   chat.feedback(turn, "up" | "down", "optional comment");   // rate an answer (a `feedback` event follows)
 *   chat.ask(text, {noCache: true})   // a fresh answer, never one from the answer cache
 *
 * The client reconnects with exponential backoff and resumes from the last event id it saw, so a dropped
 * socket or a restarted server neither loses nor repeats a token. Docent.mount(element, options) renders
 * the chat widget (markdown answers, clickable citations, collapsed tool steps, connection state).
 */
(function (global) {
  "use strict";

  var CLOSE_UNAUTHORIZED = 4401;
  var CLOSE_FORBIDDEN = 4403;
  var CLOSE_IDLE_TIMEOUT = 4408;
  var CLOSE_RESUME_REQUIRED = 4409;
  var CLOSE_FRAME_TOO_LARGE = 4413;
  var FATAL_CLOSES = [CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_FRAME_TOO_LARGE];
  var BACKOFF_FIRST_MS = 250;
  var BACKOFF_MAX_MS = 10000;
  var TERMINAL = ["answer_completed", "turn_failed", "turn_cancelled", "limit_reached"];
  var STORAGE_PREFIX = "docent:";

  // ---- helpers ------------------------------------------------------------------------------------

  function parseId(id) {
    var parts = String(id).split("-");
    return [Number(parts[0]), Number(parts[1] || 0)];
  }

  function compareIds(a, b) {
    if (a === null || a === undefined) return b === null || b === undefined ? 0 : -1;
    if (b === null || b === undefined) return 1;
    var x = parseId(a), y = parseId(b);
    return x[0] !== y[0] ? (x[0] < y[0] ? -1 : 1) : x[1] === y[1] ? 0 : x[1] < y[1] ? -1 : 1;
  }

  function newClientId() {
    if (global.crypto && global.crypto.randomUUID) return global.crypto.randomUUID().replace(/-/g, "");
    var out = "";
    for (var i = 0; i < 32; i++) out += Math.floor(Math.random() * 16).toString(16);
    return out;
  }

  function sessionStore() {
    try {
      return global.sessionStorage || null;
    } catch (e) {
      return null; // blocked third-party storage
    }
  }

  // ---- markdown: escape everything first, then add the few tags we allow --------------------------

  var ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) { return ESCAPES[c]; });
  }

  var LINK = /\[([^\]]+)\]\(((?:https?:\/\/|mailto:)[^\s()]+)\)/g;

  function bold(escaped) {
    return escaped.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
  }

  // Text outside links: bold, and citation markers as buttons.
  function decorate(escaped) {
    return bold(escaped)
      .replace(/\[(\d{1,3})\]/g, '<button type="button" class="docent-cite" data-n="$1">[$1]</button>');
  }

  // Links are cut out first, so nothing is ever rewritten inside a link target (a `[1]` in a URL stays
  // part of the URL) and link text gets no nested buttons.
  function links(escaped) {
    var out = "", last = 0, match;
    LINK.lastIndex = 0;
    while ((match = LINK.exec(escaped)) !== null) {
      out += decorate(escaped.slice(last, match.index))
        + '<a href="' + match[2] + '" target="_blank" rel="noopener noreferrer">' + bold(match[1]) + "</a>";
      last = LINK.lastIndex;
    }
    return out + decorate(escaped.slice(last));
  }

  function inline(escaped) {
    return escaped
      .split(/(`[^`]+`)/)
      .map(function (part, i) { return i % 2 === 1 ? "<code>" + part.slice(1, -1) + "</code>" : links(part); })
      .join("");
  }

  // A Markdown table (| a | b |, with a | --- | separator row) as an HTML table; cells are inline text.
  var TABLE_ROW = /^\s*\|(.*)\|\s*$/;
  var TABLE_RULE = /^\s*\|(?:\s*:?-{3,}:?\s*\|)+\s*$/;

  function tableHtml(rows) {
    var cells = function (row, tag) {
      return "<tr>" + TABLE_ROW.exec(row)[1].split("|").map(function (c) {
        return "<" + tag + ">" + inline(escapeHtml(c.trim())) + "</" + tag + ">";
      }).join("") + "</tr>";
    };
    var body = rows.slice(TABLE_RULE.test(rows[1] || "") ? 2 : 1);
    return '<table class="docent-table"><thead>' + cells(rows[0], "th") + "</thead><tbody>"
      + body.map(function (r) { return cells(r, "td"); }).join("") + "</tbody></table>";
  }

  function renderMarkdown(source) {
    var lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
    var html = [], paragraph = [], list = null, code = null, table = null;
    function flushTable() {
      if (table) html.push(tableHtml(table));
      table = null;
    }
    function flushParagraph() {
      if (paragraph.length) html.push("<p>" + paragraph.join("<br>") + "</p>");
      paragraph = [];
    }
    function flushList() {
      if (list) html.push("<" + list.tag + ">" + list.items.join("") + "</" + list.tag + ">");
      list = null;
    }
    lines.forEach(function (line) {
      if (code !== null) {
        if (/^\s*```/.test(line)) {
          html.push("<pre><code>" + code.join("\n") + "</code></pre>");
          code = null;
        } else {
          code.push(escapeHtml(line));
        }
        return;
      }
      if (TABLE_ROW.test(line)) { flushParagraph(); flushList(); (table = table || []).push(line); return; }
      flushTable();
      if (/^\s*```/.test(line)) { flushParagraph(); flushList(); code = []; return; }
      var heading = /^(#{1,3})\s+(.*)$/.exec(line);
      var bullet = /^\s*[-*]\s+(.*)$/.exec(line);
      var numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      if (heading) {
        flushParagraph(); flushList();
        var level = heading[1].length + 2;
        html.push("<h" + level + ">" + inline(escapeHtml(heading[2])) + "</h" + level + ">");
      } else if (bullet || numbered) {
        flushParagraph();
        var tag = bullet ? "ul" : "ol";
        if (!list || list.tag !== tag) { flushList(); list = {tag: tag, items: []}; }
        list.items.push("<li>" + inline(escapeHtml((bullet || numbered)[1])) + "</li>");
      } else if (!line.trim()) {
        flushParagraph(); flushList();
      } else {
        flushList();
        paragraph.push(inline(escapeHtml(line)));
      }
    });
    if (code !== null) html.push("<pre><code>" + code.join("\n") + "</code></pre>");
    flushTable(); flushParagraph(); flushList();
    return html.join("");
  }

  // Unsupported sentences arrive as code-point spans of the answer text; they are marked with two private-use
  // characters before the markdown is rendered (escaping leaves them alone), then turned into spans.
  var MARK_OPEN = "\uE000", MARK_CLOSE = "\uE001";
  var UNSUPPORTED_OPEN = '<span class="docent-unsupported" title="No passage supports this sentence">';

  function markSpans(text, spans) {
    if (!spans || !spans.length) return text;
    var chars = Array.from(String(text || "").replace(/[\uE000\uE001]/g, ""));
    var ordered = spans.slice().sort(function (a, b) { return b.start - a.start; });
    ordered.forEach(function (span) {
      if (span.start < 0 || span.end > chars.length || span.start >= span.end) return;
      chars.splice(span.end, 0, MARK_CLOSE);
      chars.splice(span.start, 0, MARK_OPEN);
    });
    return chars.join("");
  }

  function renderAnswerHtml(text, spans) {
    return renderMarkdown(markSpans(text, spans)).split(MARK_OPEN).join(UNSUPPORTED_OPEN)
      .split(MARK_CLOSE).join("</span>");
  }

  // ---- the connection -----------------------------------------------------------------------------

  function Chat(options) {
    if (!options || !options.url) throw new Error("Docent.connect needs {url, token}");
    this.url = options.url;
    this.token = options.token || null;
    this.storageKey = options.persist ? STORAGE_PREFIX + options.url : null;
    var saved = this._load();
    this.conversationId = options.conversationId || (saved && saved.conversationId) || null;
    this.lastEventId = options.lastEventId || null;
    if (!this.lastEventId && !options.history && saved && saved.conversationId === this.conversationId) {
      this.lastEventId = saved.lastEventId || null;
    }
    this.status = "connecting";
    this.listeners = {};
    this.pending = []; // asks not yet seen in the log: {id, text, mode, handlers, accepted}
    this.turns = {}; // turn number -> the handlers of the ask that started it
    this.attempt = 0;
    this.ready = false;
    this.stopped = false;
    this.ws = null;
    this._timer = null;
    this._open();
  }

  Chat.prototype.on = function (type, fn) {
    (this.listeners[type] = this.listeners[type] || []).push(fn);
    return this;
  };

  Chat.prototype._emit = function (type) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this.listeners[type] || []).forEach(function (fn) {
      try { fn.apply(null, args); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  Chat.prototype._setStatus = function (status, detail) {
    this.status = status;
    this._emit("status", status, detail || {});
  };

  Chat.prototype._load = function () {
    var store = this.storageKey && sessionStore();
    if (!store) return null;
    try { return JSON.parse(store.getItem(this.storageKey) || "null"); } catch (e) { return null; }
  };

  Chat.prototype._save = function () {
    var store = this.storageKey && sessionStore();
    if (!store) return;
    try {
      store.setItem(this.storageKey,
        JSON.stringify({conversationId: this.conversationId, lastEventId: this.lastEventId}));
    } catch (e) { /* full or blocked: memory still has it */ }
  };

  Chat.prototype._open = function () {
    var self = this;
    clearTimeout(this._timer);
    this.ready = false;
    this._setStatus(this.attempt ? "reconnecting" : "connecting", {attempt: this.attempt});
    var ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this._retry({code: 1006, reason: String(e)});
      return;
    }
    this.ws = ws;
    ws.onopen = function () {
      var hello = {type: "hello"};
      if (self.token) hello.token = self.token;
      if (self.conversationId) hello.conversation_id = self.conversationId;
      if (self.conversationId && self.lastEventId) hello.last_event_id = self.lastEventId;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (message) {
      if (ws !== self.ws) return;
      var frame;
      try { frame = JSON.parse(message.data); } catch (e) { return; }
      self._onFrame(frame);
    };
    ws.onclose = function (event) {
      if (ws !== self.ws) return;
      self.ws = null;
      self.ready = false;
      self._retry(event);
    };
  };

  Chat.prototype._retry = function (event) {
    var self = this;
    if (this.stopped) return;
    var code = event.code;
    if (FATAL_CLOSES.indexOf(code) >= 0) {
      this._setStatus("failed", {code: code, reason: event.reason || ""});
      return;
    }
    if (code === CLOSE_IDLE_TIMEOUT && !this._unaccepted().length) {
      this._setStatus("idle", {code: code});
      return; // reopened by the next ask
    }
    var delay = code === CLOSE_RESUME_REQUIRED ? 0
      : Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, this.attempt)) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this._setStatus("reconnecting", {attempt: this.attempt, delayMs: Math.round(delay), code: code});
    this._timer = setTimeout(function () { self._open(); }, delay);
  };

  Chat.prototype._unaccepted = function () {
    return this.pending.filter(function (p) { return !p.accepted; });
  };

  Chat.prototype._isNew = function (id) {
    if (compareIds(id, this.lastEventId) <= 0) return false; // seen before a reconnect: never twice
    this.lastEventId = id;
    this._save();
    return true;
  };

  Chat.prototype._onFrame = function (frame) {
    var self = this;
    switch (frame.type) {
      case "ready":
        this.conversationId = frame.conversation_id;
        this.ready = true;
        this.attempt = 0;
        this._save();
        this._setStatus("connected", {conversationId: frame.conversation_id});
        this._emit("ready", frame);
        this._unaccepted().forEach(function (p) { self._sendAsk(p); });
        break;
      case "event":
        if (this._isNew(frame.id)) this._onEvent(frame.event, frame.id);
        break;
      case "delta":
        if (!this._isNew(frame.id)) break;
        var handlers = this.turns[frame.turn];
        if (handlers && handlers.onDelta) handlers.onDelta(frame.text, frame.turn, frame.id);
        this._emit("delta", frame.text, frame.turn, frame.id);
        break;
      case "accepted":
        this.pending.forEach(function (p) { if (p.id === frame.client_message_id) p.accepted = true; });
        this._emit("accepted", frame.client_message_id);
        break;
      case "error":
        if (frame.client_message_id) {
          var failed = this._takePending(frame.client_message_id);
          if (failed && failed.handlers.onError) failed.handlers.onError(frame);
        }
        this._emit("error", frame);
        break;
      case "resume_required": // the server closes next; we resume from lastEventId
      case "pong":
        break;
    }
  };

  Chat.prototype._takePending = function (clientId) {
    for (var i = 0; i < this.pending.length; i++) {
      if (this.pending[i].id === clientId) return this.pending.splice(i, 1)[0];
    }
    return null;
  };

  Chat.prototype._onEvent = function (event, id) {
    if (event.type === "user_message" && event.client_message_id) {
      var ask = this._takePending(event.client_message_id);
      if (ask) this.turns[event.turn] = ask.handlers;
    }
    var handlers = this.turns[event.turn] || {};
    if (handlers.onEvent) handlers.onEvent(event, id);
    if ((event.type === "retrieval_done" || event.type === "cache_hit") && handlers.onSources) {
      handlers.onSources(event.sources || [], event);
    }
    if (event.type === "answer_completed" && handlers.onCitation) {
      (event.citations || []).forEach(function (c) { handlers.onCitation(c); });
    }
    this._emit("event", event, id);
    if (TERMINAL.indexOf(event.type) >= 0) {
      if (handlers.onDone) handlers.onDone(event);
      delete this.turns[event.turn];
      this._emit("done", event, id);
    }
  };

  Chat.prototype._sendAsk = function (ask) {
    if (!this.ws || !this.ready) return;
    var frame = {type: "ask", text: ask.text, mode: ask.mode, client_message_id: ask.id};
    if (ask.noCache) frame.no_cache = true;
    this.ws.send(JSON.stringify(frame));
  };

  Chat.prototype.ask = function (text, options) {
    options = options || {};
    var ask = {id: newClientId(), text: String(text), mode: options.mode || "auto", handlers: options,
               accepted: false, noCache: !!options.noCache};
    this.pending.push(ask);
    this._emit("ask", ask.id, ask.text, ask.mode);
    if (this.ready) this._sendAsk(ask);
    else if (!this.ws && (this.status === "idle" || this.status === "failed")) {
      this.attempt = 0;
      this._open();
    }
    return ask.id;
  };

  // A rating of the answer of `turn`; the server logs it as a `feedback` event on that turn.
  Chat.prototype.feedback = function (turn, rating, comment) {
    if (!this.ws || !this.ready) return null;
    var id = newClientId();
    this.ws.send(JSON.stringify({type: "feedback", turn: turn, rating: rating, comment: String(comment || ""),
                                 client_message_id: id}));
    return id;
  };

  Chat.prototype.cancel = function () {
    if (this.ws && this.ready) this.ws.send(JSON.stringify({type: "cancel"}));
  };

  Chat.prototype.close = function () {
    this.stopped = true;
    clearTimeout(this._timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this._setStatus("closed");
  };

  function connect(options) {
    return new Chat(options);
  }

  // ---- the widget -----------------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  var STATUS_TEXT = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    idle: "Idle — reconnects when you ask",
    failed: "Disconnected",
    closed: "Closed",
  };

  function stepText(event) {
    switch (event.type) {
      case "turn_started": return "Route: " + event.route + (event.reason ? " — " + event.reason : "");
      case "retrieval_done": return "Searched “" + event.query + "”: " + event.chunk_ids.length + " passages";
      case "cache_hit":
        return "Answered from a recent identical question (“" + event.cached_question + "”, similarity "
          + event.similarity.toFixed(2) + ")";
      case "llm_requested":
        return (event.step < 0 ? "Model rewrites the question for search" : "Model call " + event.step)
          + " (" + event.model + ")";
      case "llm_completed":
        return "Model answered (" + event.tokens_in + "→" + event.tokens_out + " tokens, "
          + Math.round(event.latency_ms) + " ms)";
      case "llm_failed": return "Model call failed: " + event.code;
      case "tool_intent": return "Tool " + event.tool + " " + JSON.stringify(event.args);
      case "tool_result": return "Tool " + event.tool + (event.error ? " failed: " + event.error : " → " + event.result);
      case "approval_requested": return "Waiting for a reviewer to approve " + event.tool;
      case "approval_decided": return "Reviewer " + event.reviewer + " " + event.decision + " the request";
      case "approval_expired": return "The approval request expired";
      default: return null;
    }
  }

  function Widget(root, options) {
    var self = this;
    this.root = root;
    this.options = options;
    this.sections = {}; // turn -> {section, steps, answer, citations, text}
    this.pendingSections = {}; // client id -> section shown before the log has it
    root.classList.add("docent");
    root.innerHTML = "";
    var header = el("div", "docent-header");
    this.statusEl = el("span", "docent-status", STATUS_TEXT.connecting);
    this.statusEl.setAttribute("data-state", "connecting");
    var fresh = el("button", "docent-new", "New conversation");
    fresh.type = "button";
    header.appendChild(el("span", "docent-title", options.title || "Docent"));
    header.appendChild(this.statusEl);
    header.appendChild(fresh);
    this.log = el("div", "docent-log");
    this.log.setAttribute("aria-live", "polite");
    this.source = el("aside", "docent-source");
    this.source.hidden = true;
    var form = el("form", "docent-form");
    this.input = el("textarea", "docent-input");
    this.input.rows = 2;
    this.input.placeholder = "Ask a question…";
    this.mode = el("select", "docent-mode");
    ["auto", "qa", "agent"].forEach(function (m) {
      var o = el("option", "", m);
      o.value = m;
      self.mode.appendChild(o);
    });
    var send = el("button", "docent-send", "Ask");
    send.type = "submit";
    this.stop = el("button", "docent-stop", "Stop");
    this.stop.type = "button";
    form.appendChild(this.input);
    form.appendChild(this.mode);
    form.appendChild(send);
    form.appendChild(this.stop);
    root.appendChild(header);
    root.appendChild(this.log);
    root.appendChild(this.source);
    root.appendChild(form);

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var text = self.input.value.trim();
      if (!text) return;
      self.input.value = "";
      self.chat.ask(text, {mode: self.mode.value});
    });
    this.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    this.stop.addEventListener("click", function () { self.chat.cancel(); });
    fresh.addEventListener("click", function () { self.restart(null); });
    this.log.addEventListener("click", function (e) {
      var target = e.target.closest ? e.target.closest(".docent-cite") : null;
      if (target) self.showSource(target);
    });
    this.restart(options.conversationId || undefined);
  }

  Widget.prototype.restart = function (conversationId) {
    var self = this;
    if (this.chat) this.chat.close();
    this.sections = {};
    this.pendingSections = {};
    this.log.innerHTML = "";
    this.source.hidden = true;
    var opts = {url: this.options.url, token: this.options.token, persist: this.options.persist !== false,
                history: true};
    if (conversationId === null && opts.persist) {
      var store = sessionStore();
      if (store) store.removeItem(STORAGE_PREFIX + opts.url);
    } else if (conversationId) {
      opts.conversationId = conversationId;
    }
    var chat = this.chat = connect(opts);
    chat.on("status", function (status, detail) { self.showStatus(status, detail); });
    chat.on("ask", function (id, text) { self.showPendingAsk(id, text); });
    chat.on("event", function (event, id) { self.onEvent(event, id); });
    chat.on("delta", function (text, turn) { self.onDelta(text, turn); });
    chat.on("error", function (frame) { self.showError(frame); });
  };

  Widget.prototype.showStatus = function (status, detail) {
    var text = STATUS_TEXT[status] || status;
    if (status === "reconnecting" && detail.delayMs !== undefined) {
      text = "Reconnecting in " + (detail.delayMs / 1000).toFixed(1) + " s (attempt " + detail.attempt + ")";
    }
    if (status === "failed") text = detail.code === CLOSE_UNAUTHORIZED ? "Session expired — sign in again"
      : detail.code === CLOSE_FORBIDDEN ? "Not allowed" : "Disconnected";
    this.statusEl.textContent = text;
    this.statusEl.setAttribute("data-state", status);
    this.root.setAttribute("data-conversation", this.chat ? this.chat.conversationId || "" : "");
  };

  Widget.prototype.showError = function (frame) {
    var note = el("div", "docent-error", frame.message || frame.code);
    note.setAttribute("data-code", frame.code);
    if (frame.client_message_id && this.pendingSections[frame.client_message_id]) {
      this.pendingSections[frame.client_message_id].appendChild(note);
    } else {
      this.log.appendChild(note);
    }
    this.scroll();
  };

  Widget.prototype.newSection = function () {
    var section = el("section", "docent-turn");
    section.appendChild(el("div", "docent-user"));
    this.log.appendChild(section);
    return section;
  };

  Widget.prototype.showPendingAsk = function (id, text) {
    var section = this.newSection();
    section.querySelector(".docent-user").textContent = text;
    section.setAttribute("data-pending", id);
    this.pendingSections[id] = section;
    this.scroll();
  };

  Widget.prototype.turn = function (turn) {
    var state = this.sections[turn];
    if (state) return state;
    var section = this.newSection();
    section.setAttribute("data-turn", String(turn));
    return this.bind(turn, section);
  };

  Widget.prototype.bind = function (turn, section) {
    var steps = el("details", "docent-steps");
    var summary = el("summary", "", "Steps");
    steps.appendChild(summary);
    steps.appendChild(el("ol", "docent-step-list"));
    steps.hidden = true;
    var answer = el("div", "docent-answer");
    var citations = el("ol", "docent-citations");
    var sources = el("details", "docent-sources");
    sources.open = true;
    sources.hidden = true;
    sources.appendChild(el("summary", "", "Sources"));
    sources.appendChild(el("ol", "docent-source-list"));
    section.appendChild(steps);
    section.appendChild(answer);
    section.appendChild(citations);
    section.appendChild(sources);
    var state = {section: section, steps: steps, answer: answer, citationList: citations, sources: sources,
                 text: "", citations: {}, unsupported: [], done: false, stepStarts: {}};
    this.sections[turn] = state;
    return state;
  };

  Widget.prototype.onEvent = function (event) {
    var state;
    if (event.type === "user_message") {
      var pending = this.pendingSections[event.client_message_id];
      if (pending && !this.sections[event.turn]) {
        delete this.pendingSections[event.client_message_id];
        pending.removeAttribute("data-pending");
        pending.setAttribute("data-turn", String(event.turn));
        state = this.bind(event.turn, pending);
      } else {
        state = this.turn(event.turn);
      }
      state.section.querySelector(".docent-user").textContent = event.text;
      return this.scroll();
    }
    state = this.turn(event.turn);
    var step = stepText(event);
    if (step) {
      state.steps.hidden = false;
      var item = el("li", "docent-step docent-step-" + event.type, step);
      state.steps.querySelector(".docent-step-list").appendChild(item);
      state.steps.querySelector("summary").textContent =
        state.steps.querySelectorAll("li").length + " steps";
    }
    switch (event.type) {
      case "retrieval_done":
        this.renderSources(state, event.sources || [], {});
        break;
      case "cache_hit":
        state.section.appendChild(el("div", "docent-cache-note", "answered from a recent identical question"));
        this.renderSources(state, event.sources || [], {});
        break;
      case "llm_requested":
        this.startModelCall(state, event.step);
        break;
      case "approval_requested":
      case "approval_decided":
      case "approval_expired":
        this.showApproval(state, event);
        break;
      case "answer_completed":
        state.done = true;
        state.text = event.text;
        state.unsupported = event.unsupported || [];
        var cited = event.citations || [];
        // An answer that cites nothing still lists what it was given, labelled as consulted, not cited.
        var listed = cited.length ? cited : (event.sources || []);
        var citedByN = {};
        cited.forEach(function (c) { citedByN[c.n] = c; });
        state.citations = {};
        listed.forEach(function (c) { state.citations[c.n] = c; });
        if (state.sources.hidden) {
          this.renderCitations(state, listed, !cited.length && listed.length > 0);
        } else { // the sources panel is already there: final (re-checked) sources, cited ones marked
          this.renderCitations(state, [], false);
          this.renderSources(state, event.sources || [], citedByN);
        }
        this.renderAnswer(state);
        this.showFeedback(state, event.turn, null);
        break;
      case "feedback":
        this.showFeedback(state, event.turn, event.rating);
        break;
      case "turn_failed":
      case "limit_reached":
      case "turn_cancelled":
        state.done = true;
        this.renderAnswer(state);
        var why = event.type === "turn_failed" ? "Failed: " + (event.message || event.code)
          : event.type === "turn_cancelled" ? "Cancelled"
          : "Stopped: the " + event.limit + " limit was reached; a person will follow up";
        state.section.appendChild(el("div", "docent-error", why));
        break;
    }
    this.scroll();
  };

  // Thumbs up / down under a finished answer, with an optional comment; `chosen` marks a logged rating.
  Widget.prototype.showFeedback = function (state, turn, chosen) {
    var self = this;
    var bar = state.section.querySelector(".docent-feedback");
    if (!bar) {
      bar = el("div", "docent-feedback");
      var comment = el("input", "docent-feedback-comment");
      comment.type = "text";
      comment.maxLength = 2000;
      comment.placeholder = "Comment (optional)";
      [["up", "Helpful"], ["down", "Not helpful"]].forEach(function (b) { // words: no emoji font needed
        var button = el("button", "docent-feedback-" + b[0], b[1]);
        button.type = "button";
        button.setAttribute("data-rating", b[0]);
        button.addEventListener("click", function () {
          if (self.chat.feedback(turn, b[0], comment.value)) bar.setAttribute("data-sent", b[0]);
        });
        bar.appendChild(button);
      });
      bar.appendChild(comment);
      state.section.insertBefore(bar, state.citationList);
    }
    if (chosen) bar.setAttribute("data-chosen", chosen);
  };

  // One badge per approval: "waiting" until a reviewer (or the clock) settles it, then the outcome.
  Widget.prototype.showApproval = function (state, event) {
    var badge = state.section.querySelector('.docent-approval[data-approval="' + event.approval_id + '"]');
    if (!badge) {
      badge = el("div", "docent-approval");
      badge.setAttribute("data-approval", event.approval_id);
      state.section.insertBefore(badge, state.answer);
    }
    if (event.type === "approval_requested") {
      if (badge.getAttribute("data-state")) return; // already settled (replayed out of order)
      badge.setAttribute("data-state", "waiting");
      badge.textContent = "Waiting for approval: " + event.tool + (event.room ? " (" + event.room + " reviewers)" : "");
    } else if (event.type === "approval_decided") {
      badge.setAttribute("data-state", event.decision);
      badge.textContent = (event.decision === "approved" ? "Approved" : "Denied") + " by " + event.reviewer
        + (event.reason ? " — " + event.reason : "");
    } else {
      badge.setAttribute("data-state", "expired");
      badge.textContent = "Approval expired: the action was not taken";
    }
  };

  // A model call's deltas start where the text stood at the step's first request: a retry of the same
  // step (a new llm_requested for it) drops what the failed attempt streamed.
  Widget.prototype.startModelCall = function (state, step) {
    if (state.done) return;
    if (state.stepStarts[step] === undefined) {
      state.stepStarts[step] = state.text.length;
    } else if (state.text.length > state.stepStarts[step]) {
      state.text = state.text.slice(0, state.stepStarts[step]);
      this.renderAnswer(state);
    }
  };

  Widget.prototype.onDelta = function (text, turn) {
    var state = this.turn(turn);
    if (state.done) return;
    state.text += text;
    this.renderAnswer(state);
    this.scroll();
  };

  Widget.prototype.renderAnswer = function (state) {
    state.answer.innerHTML = renderAnswerHtml(state.text, state.done ? state.unsupported : [])
      + (state.done ? "" : '<span class="docent-cursor"></span>');
    state.answer.setAttribute("data-done", state.done ? "1" : "0");
    state.answer.querySelectorAll(".docent-cite").forEach(function (b) {
      if (!state.citations[b.getAttribute("data-n")]) b.classList.add("docent-cite-unknown");
    });
  };

  Widget.prototype.renderCitations = function (state, citations, consulted) {
    state.citationList.innerHTML = "";
    state.citationList.classList.toggle("docent-consulted", !!consulted);
    if (consulted) state.citationList.setAttribute("data-label", "Sources consulted (not cited)");
    citations.forEach(function (c) {
      state.citationList.appendChild(passageItem(c, "docent-citation", "docent-cite", "docent-citation-heading"));
    });
  };

  // One numbered passage: a button that opens it, then its heading.
  function passageItem(c, itemClass, buttonClass, headingClass) {
    var item = el("li", itemClass);
    item.value = c.n;
    var button = el("button", buttonClass, c.title || c.doc_id);
    button.type = "button";
    button.setAttribute("data-n", String(c.n));
    item.appendChild(button);
    if (c.heading) item.appendChild(el("span", headingClass, " — " + c.heading));
    return item;
  }

  // The passages the model was given, shown as soon as retrieval is done (the answer streams above them).
  Widget.prototype.renderSources = function (state, sources, cited) {
    var list = state.sources.querySelector(".docent-source-list");
    list.innerHTML = "";
    state.sources.hidden = !sources.length;
    var count = Object.keys(cited).length;
    var label = sources.length === 1 ? "1 source" : sources.length + " sources";
    state.sources.querySelector("summary").textContent = label
      + (state.done ? (count ? " · " + count + " cited" : " · consulted, not cited") : "");
    sources.forEach(function (c) {
      state.citations[c.n] = c;
      var item = passageItem(c, "docent-source-item" + (cited[c.n] ? " docent-source-cited" : ""),
        "docent-cite docent-source-open", "docent-source-item-heading");
      if (c.snippet) item.appendChild(el("div", "docent-source-item-snippet", c.snippet));
      list.appendChild(item);
    });
  };

  Widget.prototype.showSource = function (button) {
    var section = button.closest(".docent-turn");
    var turn = section && section.getAttribute("data-turn");
    var state = turn !== null && this.sections[turn];
    var citation = state && state.citations[button.getAttribute("data-n")];
    if (!citation) return;
    this.source.innerHTML = "";
    var close = el("button", "docent-source-close", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Close");
    var self = this;
    close.addEventListener("click", function () { self.source.hidden = true; });
    this.source.appendChild(close);
    this.source.appendChild(el("div", "docent-source-n", "[" + citation.n + "]"));
    this.source.appendChild(el("h4", "docent-source-title", citation.title || citation.doc_id));
    if (citation.heading) this.source.appendChild(el("div", "docent-source-heading", citation.heading));
    this.source.appendChild(el("blockquote", "docent-source-snippet", citation.snippet || ""));
    this.source.setAttribute("data-n", String(citation.n));
    this.source.hidden = false;
  };

  Widget.prototype.scroll = function () {
    this.log.scrollTop = this.log.scrollHeight;
  };

  function mount(root, options) {
    if (typeof root === "string") root = document.querySelector(root);
    return new Widget(root, options);
  }

  var Docent = {
    connect: connect,
    mount: mount,
    renderMarkdown: renderMarkdown,
    escapeHtml: escapeHtml,
    compareIds: compareIds,
    CLOSE_CODES: {
      unauthorized: CLOSE_UNAUTHORIZED, forbidden: CLOSE_FORBIDDEN, idleTimeout: CLOSE_IDLE_TIMEOUT,
      resumeRequired: CLOSE_RESUME_REQUIRED, frameTooLarge: CLOSE_FRAME_TOO_LARGE, rateLimited: 4429,
    },
  };
  global.Docent = Docent;
})(typeof globalThis !== "undefined" ? globalThis : window);
