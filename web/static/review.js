/*
 * Docent reviewer console: the live approval queue of one or more rooms (/ws/review, docs/protocol.md).
 *
 *   DocentReview.mount(mainElement, {url: "wss://…/ws/review", token, rooms: ["email"]})
 *
 * Every approval is kept by id; `snapshot` and `item` frames are idempotent state updates (a settled state
 * is final), so decisions by other reviewers, expiries and reminders show up without a reload. The socket
 * reconnects with backoff and takes a fresh snapshot each time.
 */
(function (global) {
  "use strict";

  var FATAL_CLOSES = [4401, 4403, 4413];
  var BACKOFF_FIRST_MS = 250;
  var BACKOFF_MAX_MS = 10000;
  var SETTLED_SHOWN = 20;
  var requestCounter = 0;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "";
  }

  function Console(root, options) {
    this.root = root;
    this.options = options;
    this.items = {};        // approval id -> Approval
    this.reminded = {};     // approval id -> true when a reminder came
    this.selected = null;
    this.me = null;
    this.pending = {};      // request id -> approval id
    this.attempt = 0;
    this.ws = null;
    this.q = function (selector) { return root.querySelector(selector); };
    var self = this;
    // Two columns (queue | detail); set through the CSSOM, which the page's CSP allows.
    var layout = this.q(".review-layout");
    layout.style.display = "flex";
    layout.style.gap = "2rem";
    layout.style.alignItems = "flex-start";
    this.q(".review-queue-pane").style.flex = "0 0 22rem";
    this.q(".review-detail").style.flex = "1 1 auto";
    this.q(".review-approve").addEventListener("click", function () { self.decide("approve"); });
    this.q(".review-deny").addEventListener("click", function () { self.decide("deny"); });
    this.q(".review-queue").addEventListener("click", function (e) { self.onPick(e); });
    this.q(".review-settled").addEventListener("click", function (e) { self.onPick(e); });
    this.open();
  }

  Console.prototype.status = function (state, text) {
    var node = this.q(".review-status");
    node.setAttribute("data-state", state);
    node.textContent = text;
  };

  Console.prototype.open = function () {
    var self = this;
    this.status(this.attempt ? "reconnecting" : "connecting", this.attempt ? "Reconnecting…" : "Connecting…");
    var ws = this.ws = new WebSocket(this.options.url);
    ws.onopen = function () {
      var hello = {type: "hello", token: self.options.token};
      if (self.options.rooms && self.options.rooms.length) hello.rooms = self.options.rooms;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (message) {
      if (ws !== self.ws) return;
      var frame;
      try { frame = JSON.parse(message.data); } catch (e) { return; }
      self.onFrame(frame);
    };
    ws.onclose = function (event) {
      if (ws !== self.ws) return;
      self.ws = null;
      if (FATAL_CLOSES.indexOf(event.code) >= 0) {
        self.status("failed", event.code === 4401 ? "Session expired — sign in again" : "Not allowed");
        return;
      }
      var delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, self.attempt));
      self.attempt += 1;
      self.status("reconnecting", "Reconnecting in " + (delay / 1000).toFixed(1) + " s");
      setTimeout(function () { self.open(); }, event.code === 4409 ? 0 : delay);
    };
  };

  Console.prototype.onFrame = function (frame) {
    var self = this;
    switch (frame.type) {
      case "ready":
        this.me = frame.reviewer;
        this.attempt = 0;
        this.status("connected", "Live — " + frame.rooms.join(", "));
        this.q(".review-who").textContent = frame.reviewer + " @ " + frame.tenant;
        this.snapshotRooms = {};
        break;
      case "snapshot":
        // Pending items of this room that the snapshot no longer lists were settled while we were away.
        var listed = {};
        frame.items.forEach(function (a) { listed[a.approval_id] = true; self.apply(a); });
        Object.keys(this.items).forEach(function (id) {
          var a = self.items[id];
          if (a.room === frame.room && a.state === "pending" && !listed[id]) delete self.items[id];
        });
        this.render();
        break;
      case "item":
        if (frame.kind === "reminder") this.reminded[frame.approval.approval_id] = true;
        this.apply(frame.approval);
        this.render();
        break;
      case "decision":
        delete this.pending[frame.request_id];
        var text = frame.ok ? "You " + frame.state + " it."
          : frame.state === "expired" ? "Too late: it expired."
          : "Already " + frame.state + " by " + frame.by + ".";
        this.showResult(frame.approval_id, text, frame.ok ? "ok" : "lost");
        break;
      case "error":
        var target = frame.request_id ? this.pending[frame.request_id] : this.selected;
        if (frame.request_id) delete this.pending[frame.request_id];
        this.showResult(target, "Refused: " + frame.message, "error");
        break;
    }
  };

  Console.prototype.apply = function (approval) {
    var known = this.items[approval.approval_id];
    if (known && known.state !== "pending" && approval.state === "pending") return; // settled is final
    this.items[approval.approval_id] = approval;
  };

  Console.prototype.sorted = function (pending) {
    var self = this;
    return Object.keys(this.items)
      .map(function (id) { return self.items[id]; })
      .filter(function (a) { return (a.state === "pending") === pending; })
      .sort(function (a, b) {
        return pending ? a.created_ms - b.created_ms : (b.decided_ms || 0) - (a.decided_ms || 0);
      });
  };

  Console.prototype.render = function () {
    var self = this;
    var queue = this.q(".review-queue"), settled = this.q(".review-settled");
    queue.innerHTML = "";
    settled.innerHTML = "";
    var pending = this.sorted(true);
    pending.forEach(function (a) { queue.appendChild(self.row(a)); });
    this.sorted(false).slice(0, SETTLED_SHOWN).forEach(function (a) { settled.appendChild(self.row(a)); });
    this.q(".review-count").textContent = String(pending.length);
    if (!this.selected && pending.length) this.selected = pending[0].approval_id;
    this.renderDetail();
  };

  Console.prototype.row = function (a) {
    var item = el("li", "review-item");
    item.setAttribute("data-id", a.approval_id);
    item.setAttribute("data-state", a.state);
    if (a.approval_id === this.selected) item.setAttribute("aria-current", "true");
    var button = el("button", "review-pick", a.tool + " — " + a.requested_by + " (" + a.room + ")");
    button.type = "button";
    item.appendChild(button);
    if (a.state !== "pending") {
      item.appendChild(el("span", "review-item-state",
        " " + a.state + (a.reviewer ? " by " + a.reviewer : "")));
    } else if (this.reminded[a.approval_id]) {
      item.appendChild(el("span", "review-item-reminder", " expires soon"));
    }
    return item;
  };

  Console.prototype.onPick = function (e) {
    var item = e.target.closest ? e.target.closest(".review-item") : null;
    if (!item) return;
    this.selected = item.getAttribute("data-id");
    this.q(".review-result").textContent = "";
    this.render();
  };

  Console.prototype.renderDetail = function () {
    var a = this.selected && this.items[this.selected];
    var pane = this.q(".review-detail");
    if (!a) { pane.hidden = true; return; }
    pane.hidden = false;
    pane.setAttribute("data-id", a.approval_id);
    pane.setAttribute("data-state", a.state);
    this.q(".review-detail-title").textContent = a.tool;
    this.q(".review-requested-by").textContent = a.requested_by;
    this.q(".review-room").textContent = a.room;
    this.q(".review-risk").textContent = a.risk;
    this.q(".review-context").textContent = a.context || "(none)";
    this.q(".review-reason").textContent = a.reason || "(none given)";
    this.q(".review-expires").textContent = when(a.expires_ms);
    this.q(".review-state").textContent = a.state === "pending" ? "pending"
      : a.state + (a.reviewer ? " by " + a.reviewer : "") + (a.decision_reason ? " — " + a.decision_reason : "")
        + (a.decided_ms ? " at " + when(a.decided_ms) : "");
    this.q(".review-args").textContent = JSON.stringify(a.args, null, 2);
    var texts = this.q(".review-args-text");  // multi-line text arguments (an email body) as they read
    texts.innerHTML = "";
    Object.keys(a.args || {}).forEach(function (name) {
      var value = a.args[name];
      if (typeof value !== "string" || value.indexOf("\n") < 0) return;
      texts.appendChild(el("h4", "review-arg-name", name));
      texts.appendChild(el("pre", "review-arg-text", value));
    });
    var open = a.state === "pending";
    var own = a.requested_by === this.me && !a.self_approval_allowed;
    this.q(".review-approve").disabled = !open || own;
    this.q(".review-approve").title = own ? "You cannot approve your own request" : "";
    this.q(".review-deny").disabled = !open;
    this.q(".review-decision-reason").disabled = !open;
  };

  Console.prototype.decide = function (decision) {
    var a = this.selected && this.items[this.selected];
    if (!a || !this.ws || a.state !== "pending") return;
    requestCounter += 1;
    var requestId = "r" + Date.now().toString(36) + "-" + requestCounter;
    this.pending[requestId] = a.approval_id;
    var reason = this.q(".review-decision-reason").value.trim();
    this.ws.send(JSON.stringify({type: "decide", approval_id: a.approval_id, decision: decision,
                                 reason: reason, request_id: requestId}));
    this.q(".review-decision-reason").value = "";
    this.showResult(a.approval_id, "Sending…", "sending");
  };

  Console.prototype.showResult = function (approvalId, text, state) {
    var node = this.q(".review-result");
    node.textContent = text;
    node.setAttribute("data-state", state);
    node.setAttribute("data-id", approvalId || "");
  };

  global.DocentReview = {
    mount: function (root, options) {
      if (typeof root === "string") root = document.querySelector(root);
      return new Console(root, options);
    },
  };
})(typeof globalThis !== "undefined" ? globalThis : window);
