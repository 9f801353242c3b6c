/*
 * Docent operator console (GET /admin): index versions, reindex jobs and the background demo ingest with
 * live progress (/ws/admin), document upload and the approvals audit. The other cards add their methods
 * to `Admin`: reindex jobs and the background ingest (admin-reindex.js), run traces (admin-traces.js),
 * usage, quality and latency charts (admin-usage.js), documents and folder syncs (admin-documents.js).
 * The page loads admin-charts.js, this file, then the cards.
 *
 *   DocentAdmin.mount(mainElement, {wsUrl: "wss://…/ws/admin"})
 *
 * The admin API key is typed in once, kept in sessionStorage (this tab only) and sent as `X-Admin-Key`
 * on every request; the WebSocket, which cannot carry headers from a browser, gets it as `?admin_key=`.
 * A 401 anywhere (or close 4401 on the socket) forgets the key and asks again. Server data is only ever
 * inserted with textContent.
 */
(function (global) {
  "use strict";

  var KEY_STORAGE = "docent:admin-key";
  var WS_CLOSE_UNAUTHORISED = 4401;
  var WS_BACKOFF_FIRST_MS = 500;
  var WS_BACKOFF_MAX_MS = 10000;
  var ARM_TIMEOUT_MS = 4000;
  var TERMINAL = ["done", "rejected", "cancelled", "failed"];
  var DAY_MS = 86400000;
  var USAGE_DEFAULT_DAYS = 7;


  // -- small helpers ----------------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "—";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function fixed(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "—";
  }

  function usd(value) {
    return typeof value === "number" ? "$" + value.toFixed(4) : "—";
  }

  function ms(value) {
    return typeof value === "number" ? Math.round(value) + " ms" : "—";
  }

  function pretty(value) {
    if (typeof value === "string") return value;
    try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
  }

  function isTerminal(status) {
    return TERMINAL.indexOf(status) >= 0;
  }

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORAGE); } catch (e) { return null; }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage blocked: the key lives in memory for this load */ }
  }

  function fact(dl, label, value) {
    dl.appendChild(el("dt", "", label));
    dl.appendChild(el("dd", "", value));
  }

  /* A button that needs a second click within ARM_TIMEOUT_MS (destructive actions, no modal dialogs). */
  function armed(button, confirmText, action) {
    var original = button.textContent;
    var timer = null;
    button.addEventListener("click", function () {
      if (button.getAttribute("data-armed") === "1") {
        clearTimeout(timer);
        button.removeAttribute("data-armed");
        button.textContent = original;
        action();
        return;
      }
      button.setAttribute("data-armed", "1");
      button.textContent = confirmText;
      timer = setTimeout(function () {
        button.removeAttribute("data-armed");
        button.textContent = original;
      }, ARM_TIMEOUT_MS);
    });
  }

  // -- the console ------------------------------------------------------------------------------------

  function Admin(root, options) {
    this.root = root;
    this.options = options || {};
    this.key = null;
    this.ws = null;
    this.wsAttempt = 0;
    this.wsTimer = null;
    this.job = null;        // the job shown in the job panel
    this.jobs = {};         // job id -> latest job record
    this.jobOrder = [];     // job ids, newest first
    this.q = function (selector) { return root.querySelector(selector); };
    this.bind();
    var key = storedKey();
    if (key) this.signIn(key);
    else this.showSignin("");
  }

  Admin.prototype.bind = function () {
    var self = this;
    this.q(".admin-key-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var key = self.q(".admin-key-input").value.trim();
      if (key) self.signIn(key);
    });
    this.q(".admin-signout").addEventListener("click", function () { self.signOut(""); });
    this.q(".admin-refresh").addEventListener("click", function () { self.loadVersions(); });
    armed(this.q(".admin-rollback"), "Confirm roll back", function () { self.rollback(); });
    this.q(".admin-versions tbody").addEventListener("click", function (e) { self.onVersionClick(e); });
    this.q(".admin-reindex-form").addEventListener("submit", function (e) {
      e.preventDefault();
      self.startReindex();
    });
    armed(this.q(".admin-job-cancel"), "Confirm cancel", function () { self.cancelJob(); });
    this.q(".admin-jobs").addEventListener("click", function (e) {
      var item = e.target.closest("[data-job-id]");
      if (item && self.jobs[item.getAttribute("data-job-id")]) {
        self.showJob(self.jobs[item.getAttribute("data-job-id")]);
      }
    });
    this.q(".admin-upload-form").addEventListener("submit", function (e) {
      e.preventDefault();
      self.upload();
    });
    this.q(".admin-trace-form").addEventListener("submit", function (e) {
      e.preventDefault();
      self.loadTrace();
    });
    this.q(".admin-usage-form").addEventListener("submit", function (e) {
      e.preventDefault();
      self.loadUsage();
    });
    var today = new Date();
    this.q(".admin-usage-to").value = isoDay(today);
    this.q(".admin-usage-from").value = isoDay(new Date(today.getTime() - (USAGE_DEFAULT_DAYS - 1) * DAY_MS));
    this.q(".admin-audit-form").addEventListener("submit", function (e) {
      e.preventDefault();
      self.loadAudit();
    });
  };

  Admin.prototype.status = function (state, text) {
    var node = this.q(".admin-status");
    node.setAttribute("data-state", state);
    node.textContent = text;
  };

  Admin.prototype.message = function (selector, text, isError) {
    var node = this.q(selector);
    node.textContent = text || "";
    if (isError) node.setAttribute("data-error", "1");
    else node.removeAttribute("data-error");
    return node;
  };

  // -- credentials ------------------------------------------------------------------------------------

  Admin.prototype.showSignin = function (error) {
    this.q(".admin-signin").hidden = false;
    this.q(".admin-console").hidden = true;
    this.q(".admin-signout").hidden = true;
    this.q(".admin-key-error").textContent = error || "";
    this.status(error ? "failed" : "signed-out", error ? "Not signed in" : "Signed out");
    this.q(".admin-key-input").focus();
  };

  Admin.prototype.signIn = function (key) {
    var self = this;
    this.key = key;
    this.status("connecting", "Checking the key…");
    this.q(".admin-key-error").textContent = "";
    this.api("GET", "/admin/versions", undefined, { quietAuth: true }).then(function (data) {
      storeKey(key);
      self.q(".admin-key-input").value = "";
      self.q(".admin-signin").hidden = true;
      self.q(".admin-console").hidden = false;
      self.q(".admin-signout").hidden = false;
      self.status("connected", "Signed in");
      self.renderVersions(data);
      self.connect();
    }).catch(function (err) {
      if (err.status === 401) self.signOut("The admin key was rejected (401). Check it and try again.");
      else {
        self.key = null;
        self.showSignin("Could not check the key: " + err.message);
      }
    });
  };

  Admin.prototype.signOut = function (error) {
    this.key = null;
    storeKey(null);
    this.disconnect();
    this.showSignin(error);
  };

  /* fetch with the admin key; resolves to the decoded JSON body, rejects with {status, message, data}. */
  Admin.prototype.api = function (method, path, body, opts) {
    var self = this;
    opts = opts || {};
    var headers = { "X-Admin-Key": this.key || "", "Accept": "application/json" };
    var init = { method: method, headers: headers, credentials: "same-origin", cache: "no-store" };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
        if (!response.ok) {
          var err = new Error((data && data.message) || "HTTP " + response.status);
          err.status = response.status;
          err.data = data;
          if (response.status === 401 && !opts.quietAuth) {
            self.signOut("The admin key was rejected (401). Sign in again.");
          }
          throw err;
        }
        return data;
      });
    }, function (networkError) {
      var err = new Error("network error: " + networkError.message);
      err.status = 0;
      throw err;
    });
  };

  // -- index versions ---------------------------------------------------------------------------------

  Admin.prototype.loadVersions = function () {
    var self = this;
    return this.api("GET", "/admin/versions").then(function (data) {
      self.renderVersions(data);
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-versions-msg", "Could not list versions: " + err.message, true);
    });
  };

  Admin.prototype.renderVersions = function (data) {
    var alias = data.alias;
    var versions = data.versions || [];
    var active = null;
    versions.forEach(function (v) { if (v.active) active = v.manifest; });
    this.q(".admin-alias-version").textContent = alias ? alias.version : "none (no index yet)";
    var model = (alias && alias.model) || (active && active.model) || null;
    var modelText = "—";
    if (model) {
      modelText = (alias && alias.embedder ? alias.embedder + " · " : "") + model.name +
        " (" + model.dimension + " dims)";
    }
    this.q(".admin-alias-model").textContent = modelText;
    this.q(".admin-alias-previous").textContent = alias && alias.previous
      ? alias.previous + (alias.previous_embedder ? " · " + alias.previous_embedder : "") : "none";
    this.q(".admin-alias-switched").textContent = alias
      ? when(alias.switched_at_ms) + (alias.reason ? " — " + alias.reason : "") : "—";
    this.q(".admin-alias").setAttribute("data-active", alias ? alias.version : "");
    this.q(".admin-rollback").disabled = !(alias && alias.previous);

    var body = this.q(".admin-versions tbody");
    clear(body);
    if (!versions.length) {
      var empty = el("tr", "admin-empty");
      var cell = el("td", "", "No index versions yet.");
      cell.colSpan = 7;
      empty.appendChild(cell);
      body.appendChild(empty);
    }
    versions.forEach(function (v) {
      var m = v.manifest;
      var row = el("tr");
      row.setAttribute("data-version", m.version);
      row.setAttribute("data-state", m.state);
      if (v.active) row.setAttribute("data-active", "1");
      row.appendChild(el("td", "admin-mono", m.version));
      var state = el("td");
      state.appendChild(el("span", "admin-badge admin-state", m.state));
      if (v.active) state.appendChild(el("span", "admin-badge admin-flag", "active alias"));
      if (v.previous) state.appendChild(el("span", "admin-badge admin-flag", "rollback target"));
      if (v.dropped) state.appendChild(el("span", "admin-badge admin-flag", "data dropped"));
      row.appendChild(state);
      row.appendChild(el("td", "", m.model ? m.model.name + " (" + m.model.dimension + ")" : "—"));
      row.appendChild(el("td", "admin-num", m.documents));
      row.appendChild(el("td", "admin-num", m.chunks));
      row.appendChild(el("td", "", when(m.created_at_ms)));
      var actions = el("td", "admin-actions");
      var retire = el("button", "admin-retire", "Retire");
      retire.type = "button";
      retire.setAttribute("data-version", m.version);
      retire.disabled = v.active || v.dropped;
      retire.title = v.active ? "the active version cannot be retired" : "retire and drop its data";
      actions.appendChild(retire);
      row.appendChild(actions);
      body.appendChild(row);
    });

    var jobs = data.jobs || [];
    for (var i = jobs.length - 1; i >= 0; i--) this.rememberJob(jobs[i]);
    if (!this.job && jobs.length) this.showJob(jobs[0]);
  };

  Admin.prototype.onVersionClick = function (e) {
    var button = e.target.closest("button.admin-retire");
    if (!button || button.disabled) return;
    var self = this;
    var version = button.getAttribute("data-version");
    if (button.getAttribute("data-armed") !== "1") {
      button.setAttribute("data-armed", "1");
      button.textContent = "Confirm retire";
      setTimeout(function () {
        if (button.isConnected) {
          button.removeAttribute("data-armed");
          button.textContent = "Retire";
        }
      }, ARM_TIMEOUT_MS);
      return;
    }
    button.disabled = true;
    this.api("POST", "/admin/versions/" + encodeURIComponent(version) + "/retire").then(function () {
      self.message(".admin-versions-msg", "Retired " + version + ".");
      return self.loadVersions();
    }).catch(function (err) {
      button.disabled = false;
      if (err.status !== 401) self.message(".admin-versions-msg", "Retire refused: " + err.message, true);
    });
  };

  Admin.prototype.rollback = function () {
    var self = this;
    var force = this.q(".admin-rollback-force").checked;
    this.api("POST", "/admin/rollback", { force: force }).then(function (alias) {
      self.message(".admin-versions-msg", "Rolled back: " + alias.version + " is active again.");
      return self.loadVersions();
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-versions-msg", "Rollback refused: " + err.message, true);
    });
  };

  // -- the live socket --------------------------------------------------------------------------------

  Admin.prototype.wsStatus = function (state, text) {
    var node = this.q(".admin-ws");
    node.setAttribute("data-state", state);
    node.textContent = text;
  };

  Admin.prototype.connect = function () {
    var self = this;
    if (!this.key || !this.options.wsUrl) return;
    this.disconnect();
    var url = this.options.wsUrl + "?admin_key=" + encodeURIComponent(this.key);
    var ws;
    try { ws = new WebSocket(url); } catch (e) { this.scheduleReconnect(); return; }
    this.ws = ws;
    this.wsStatus("connecting", "Live updates: connecting…");
    ws.onopen = function () {
      self.wsAttempt = 0;
      self.wsStatus("connected", "Live updates: on");
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && frame.type === "reindex" && frame.job) self.onJob(frame.job);
      if (frame && frame.type === "sync" && frame.progress && self.onSync) self.onSync(frame.progress);
      if (frame && frame.type === "ingest" && frame.progress) self.onIngest(frame.progress);
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) return;
      self.ws = null;
      if (event.code === WS_CLOSE_UNAUTHORISED) {
        self.signOut("The admin key was rejected by the live socket. Sign in again.");
        return;
      }
      if (self.key) self.scheduleReconnect();
    };
  };

  Admin.prototype.scheduleReconnect = function () {
    var self = this;
    var delay = Math.min(WS_BACKOFF_MAX_MS, WS_BACKOFF_FIRST_MS * Math.pow(2, this.wsAttempt++));
    this.wsStatus("reconnecting", "Live updates: reconnecting…");
    clearTimeout(this.wsTimer);
    this.wsTimer = setTimeout(function () {
      self.connect();
      if (self.key) self.loadVersions();  // catch up on frames missed while disconnected
    }, delay);
  };

  Admin.prototype.disconnect = function () {
    clearTimeout(this.wsTimer);
    var ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(1000); } catch (e) { /* already closing */ }
    }
    this.wsStatus("connecting", "Live updates: off");
  };

  // -- upload -----------------------------------------------------------------------------------------

  Admin.prototype.upload = function () {
    var self = this;
    var input = this.q(".admin-upload-file");
    var tenant = this.q(".admin-upload-tenant").value.trim();
    if (!input.files || !input.files.length || !tenant) return;
    var form = new FormData();
    form.append("file", input.files[0], input.files[0].name);
    var button = this.q(".admin-upload-send");
    button.disabled = true;
    this.message(".admin-upload-result", "Uploading " + input.files[0].name + "…");
    this.api("POST", "/api/documents?tenant=" + encodeURIComponent(tenant), form).then(function (data) {
      var out = self.message(".admin-upload-result", "");
      out.appendChild(document.createTextNode("Queued " + data.document + " (" + data.bytes +
        " bytes) for tenant " + data.tenant + " — ingest job "));
      out.appendChild(el("code", "admin-upload-job", data.job || "(none)"));
      input.value = "";
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-upload-result", "Upload failed: " + err.message, true);
    }).then(function () {
      button.disabled = false;
    });
  };

  // -- approvals audit --------------------------------------------------------------------------------

  Admin.prototype.loadAudit = function () {
    var self = this;
    var params = new URLSearchParams();
    params.set("tenant", this.q(".admin-audit-tenant").value.trim());
    var tool = this.q(".admin-audit-tool").value.trim();
    var outcome = this.q(".admin-audit-outcome").value;
    if (tool) params.set("tool", tool);
    if (outcome) params.set("outcome", outcome);
    var body = this.q(".admin-audit tbody");
    this.message(".admin-audit-msg", "Loading…");
    this.api("GET", "/admin/decisions?" + params.toString()).then(function (data) {
      clear(body);
      var rows = data.decisions || [];
      self.message(".admin-audit-msg", rows.length + " decision(s) for tenant " + data.tenant + ".");
      rows.forEach(function (d) {
        var row = el("tr");
        row.setAttribute("data-approval", d.approval_id);
        row.setAttribute("data-outcome", d.outcome);
        row.appendChild(el("td", "", when(d.decided_ms)));
        row.appendChild(el("td", "admin-mono", d.tool));
        var outcomeCell = el("td");
        outcomeCell.appendChild(el("span", "admin-badge admin-outcome", d.outcome));
        row.appendChild(outcomeCell);
        row.appendChild(el("td", "", d.reviewer || "—"));
        row.appendChild(el("td", "", d.requested_by || "—"));
        row.appendChild(el("td", "", d.room || "—"));
        var conv = el("td");
        var link = el("button", "admin-link", d.conv_id);
        link.type = "button";
        link.title = "show this conversation's trace";
        link.addEventListener("click", function () {
          self.q(".admin-trace-conv").value = d.conv_id;
          self.q(".admin-trace-turn").value = "";
          self.loadTrace();
          self.q(".admin-trace-card").scrollIntoView({ behavior: "smooth" });
        });
        conv.appendChild(link);
        row.appendChild(conv);
        row.appendChild(el("td", "", d.reason || ""));
        body.appendChild(row);
      });
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-audit-msg", "Could not load decisions: " + err.message, true);
    });
  };

  global.DocentAdmin = {
    mount: function (root, options) { return new Admin(root, options); },
    Admin: Admin,  // admin-reindex.js, admin-traces.js and admin-usage.js add their methods to it
    // for the console's other cards
    helpers: {el: el, clear: clear, when: when, armed: armed, duration: duration, fixed: fixed, usd: usd,
              ms: ms, pretty: pretty, fact: fact,
              isTerminal: isTerminal}
  };
})(window);
