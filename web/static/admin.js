/*
 * Docent operator console (GET /admin): index versions, reindex jobs and the background demo ingest with
 * live progress (/ws/admin),
 * document upload, run traces, the approvals audit, and usage (tokens, cost, quality per tenant and day)
 * with inline SVG charts (no chart library, nothing from a CDN): tokens and cost per day (bars), quality
 * signals per day and Q&A latency percentiles per hour (lines), reindex progress per running job (bars, and
 * the shown job's line, live from /ws/admin).
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
  var LONG_TEXT_CHARS = 400;
  var DAY_MS = 86400000;
  var USAGE_DEFAULT_DAYS = 7;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var CHART_W = 420, CHART_H = 140, CHART_PAD = 24;

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
  function svg(tag, attributes) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attributes || {}).forEach(function (k) { node.setAttribute(k, String(attributes[k])); });
    return node;
  }
  // One bar per day (values[i] for days[i]), scaled to the largest; the day under each bar.
  function barChart(days, values, format) {
    var chart = svg("svg", {viewBox: "0 0 " + CHART_W + " " + CHART_H, width: CHART_W, height: CHART_H,
                            role: "img", "class": "admin-bars"});
    var top = Math.max.apply(null, values.concat([0]));
    var slot = (CHART_W - 2 * CHART_PAD) / Math.max(1, days.length);
    var usable = CHART_H - 2 * CHART_PAD;
    days.forEach(function (day, i) {
      var h = top > 0 ? Math.round(usable * values[i] / top) : 0;
      var x = CHART_PAD + i * slot + slot * 0.15;
      var bar = svg("rect", {x: x.toFixed(1), y: CHART_H - CHART_PAD - h, width: (slot * 0.7).toFixed(1), height: h,
                             "class": "admin-bar", "data-day": day, "data-value": values[i]});
      var title = svg("title");
      title.textContent = day + ": " + format(values[i]);
      bar.appendChild(title);
      chart.appendChild(bar);
      var label = svg("text", {x: (x + slot * 0.35).toFixed(1), y: CHART_H - 8, "text-anchor": "middle",
                               "class": "admin-bar-label"});
      label.textContent = day.slice(5);
      chart.appendChild(label);
    });
    var peak = svg("text", {x: CHART_PAD, y: 14, "class": "admin-bar-label"});
    peak.textContent = "max " + format(top);
    chart.appendChild(peak);
    return chart;
  }
  // One line per series over shared x labels (values[i] null: a gap), scaled to `top` (or the largest).
  function lineChart(labels, series, format, top) {
    var chart = svg("svg", {viewBox: "0 0 " + CHART_W + " " + CHART_H, width: CHART_W, height: CHART_H,
                            role: "img", "class": "admin-bars admin-lines"});
    var all = [];
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null) all.push(v); }); });
    var peak = top || Math.max.apply(null, all.concat([0]));
    var usable = CHART_H - 2 * CHART_PAD;
    var step = (CHART_W - 2 * CHART_PAD) / Math.max(1, labels.length - 1);
    chart.appendChild(svg("line", {x1: CHART_PAD, y1: CHART_H - CHART_PAD, x2: CHART_W - CHART_PAD,
                                   y2: CHART_H - CHART_PAD, "class": "admin-axis"}));
    series.forEach(function (s, n) {
      var d = "", pen = "M", dots = [];
      s.values.forEach(function (v, i) {
        if (v === null) { pen = "M"; return; }
        var x = (CHART_PAD + i * step).toFixed(1);
        var y = (CHART_H - CHART_PAD - (peak > 0 ? usable * Math.min(v, peak) / peak : 0)).toFixed(1);
        d += pen + x + " " + y + " ";
        pen = "L";
        var dot = svg("circle", {cx: x, cy: y, r: 2.5, "class": "admin-dot admin-dot-" + n});
        var tip = svg("title");
        tip.textContent = labels[i] + " " + s.name + ": " + format(v);
        dot.appendChild(tip);
        dots.push(dot);
      });
      if (!d) return;  // nothing to draw for this series
      var path = svg("path", {d: d.trim(), "class": "admin-line admin-line-" + n, "data-series": s.name,
                              "data-points": s.values.filter(function (v) { return v !== null; }).length});
      var title = svg("title");
      title.textContent = s.name;
      path.appendChild(title);
      chart.appendChild(path);
      dots.forEach(function (dot) { chart.appendChild(dot); });  // a lone point is a dot, not a line
      var key = svg("text", {x: CHART_W - CHART_PAD - 90 * (series.length - n), y: 14,
                             "class": "admin-bar-label admin-line-key admin-line-" + n});
      key.textContent = "— " + s.name;
      chart.appendChild(key);
    });
    var every = labels.length > 24 ? 12 : Math.max(1, Math.ceil(labels.length / 6));
    labels.forEach(function (label, i) {
      if (i % every) return;
      var text = svg("text", {x: (CHART_PAD + i * step).toFixed(1), y: CHART_H - 8, "text-anchor": "middle",
                              "class": "admin-bar-label"});
      text.textContent = label;
      chart.appendChild(text);
    });
    var max = svg("text", {x: CHART_PAD, y: 14, "class": "admin-bar-label"});
    max.textContent = "max " + format(peak);
    chart.appendChild(max);
    return chart;
  }
  // One horizontal bar per job (done / total), and under them one job's documents done over time.
  function progressChart(jobs, samples) {
    var rowH = 18;
    var lineH = samples.length > 1 ? 60 : 0;
    var height = jobs.length * rowH + lineH + 8;
    var chart = svg("svg", {viewBox: "0 0 " + CHART_W + " " + height, width: CHART_W, height: height,
                            role: "img", "class": "admin-bars admin-progress"});
    var barW = CHART_W - 2 * CHART_PAD - 110;
    jobs.forEach(function (job, i) {
      var y = 4 + i * rowH, total = Math.max(1, job.docs_total || 0);
      var share = Math.min(1, (job.docs_done || 0) / total);
      var label = svg("text", {x: 4, y: y + 11, "class": "admin-bar-label"});
      label.textContent = job.id.slice(0, 12);
      chart.appendChild(label);
      chart.appendChild(svg("rect", {x: 100, y: y, width: barW, height: 12, "class": "admin-progress-track"}));
      chart.appendChild(svg("rect", {x: 100, y: y, width: (barW * share).toFixed(1), height: 12,
                                     "class": "admin-progress-fill", "data-job": job.id,
                                     "data-share": share.toFixed(3)}));
      var pct = svg("text", {x: 106 + barW, y: y + 11, "class": "admin-bar-label"});
      pct.textContent = Math.floor(100 * share) + "%";
      chart.appendChild(pct);
    });
    if (lineH) {
      var top = jobs.length * rowH + 4, first = samples[0].t, last = samples[samples.length - 1].t;
      var total = Math.max(1, samples[samples.length - 1].total);
      var d = samples.map(function (p, i) {
        var x = 100 + barW * (last > first ? (p.t - first) / (last - first) : 0);
        var y = top + lineH - 6 - (lineH - 12) * Math.min(1, p.done / total);
        return (i ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      }).join(" ");
      chart.appendChild(svg("path", {d: d, "class": "admin-line admin-line-0 admin-progress-line",
                                     "data-points": samples.length}));
    }
    return chart;
  }
  function share(part, whole) {
    return whole > 0 ? part / whole : null;
  }
  function replaceChart(figure, chart) {
    var old = figure.querySelector("svg");
    if (old) figure.removeChild(old);
    figure.appendChild(chart);
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

  // -- reindex jobs -----------------------------------------------------------------------------------

  Admin.prototype.startReindex = function () {
    var self = this;
    var body = { model: this.q(".admin-rx-model").value, force: this.q(".admin-rx-force").checked };
    var tokens = this.q(".admin-rx-tokens").value.trim();
    var overlap = this.q(".admin-rx-overlap").value.trim();
    if (tokens !== "") body.chunk_tokens = parseInt(tokens, 10);
    if (overlap !== "") body.chunk_overlap = parseInt(overlap, 10);
    var button = this.q(".admin-rx-start");
    button.disabled = true;
    this.message(".admin-rx-msg", "Starting…");
    this.api("POST", "/admin/reindex", body).then(function (data) {
      self.message(".admin-rx-msg", "Started job " + data.job_id + " (queued for a reindex worker).");
      self.showJob(data.job);
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-rx-msg", "Reindex refused: " + err.message, true);
    }).then(function () {
      button.disabled = false;
    });
  };

  Admin.prototype.cancelJob = function () {
    var self = this;
    if (!this.job) return;
    var id = this.job.id;
    this.api("POST", "/admin/reindex/" + encodeURIComponent(id) + "/cancel").then(function (job) {
      self.message(".admin-rx-msg", "Cancel requested for " + id + ".");
      self.onJob(job);
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-rx-msg", "Cancel failed: " + err.message, true);
    });
  };

  Admin.prototype.rememberJob = function (job) {
    if (!job || !job.id) return;
    var known = this.jobs[job.id];
    if (known && (known.updated_at_ms || 0) > (job.updated_at_ms || 0)) return;  // stale frame
    if (!known) this.jobOrder.unshift(job.id);
    this.jobs[job.id] = job;
    this.sampleJob(job);
    this.renderJobList();
  };

  Admin.prototype.renderJobList = function () {
    var list = this.q(".admin-jobs");
    clear(list);
    var self = this;
    this.jobOrder.slice(0, 20).forEach(function (id) {
      var job = self.jobs[id];
      var item = el("li", "admin-job-item");
      item.setAttribute("data-job-id", id);
      item.setAttribute("data-status", job.status);
      if (self.job && self.job.id === id) item.setAttribute("aria-current", "true");
      item.appendChild(el("span", "admin-mono", id));
      item.appendChild(el("span", "admin-badge admin-state", job.status));
      item.appendChild(el("span", "admin-muted", job.model + " → " + job.new_version + " · " +
        when(job.created_at_ms)));
      list.appendChild(item);
    });
  };

  /* A job record from a response or a /ws/admin frame. */
  Admin.prototype.onJob = function (job) {
    var wasTerminal = this.jobs[job.id] ? isTerminal(this.jobs[job.id].status) : false;
    var known = this.jobs[job.id];
    if (known && (known.updated_at_ms || 0) > (job.updated_at_ms || 0)) return;
    this.rememberJob(job);
    // Follow the shown job; a new running job (started elsewhere) takes over a finished panel.
    if (!this.job || this.job.id === job.id || (isTerminal(this.job.status) && !isTerminal(job.status))) {
      this.showJob(job);
    }
    if (isTerminal(job.status) && !wasTerminal) this.loadVersions();  // a cutover or rejection
  };

  // Progress samples per job, from the /ws/admin frames (the line), and one bar per running job.
  Admin.prototype.sampleJob = function (job) {
    this.jobSamples = this.jobSamples || {};
    var samples = this.jobSamples[job.id] = this.jobSamples[job.id] || [];
    var t = job.updated_at_ms || Date.now();
    var last = samples[samples.length - 1];
    if (last && last.t >= t) return;
    samples.push({t: t, done: job.docs_done || 0, total: job.docs_total || 0});
    if (samples.length > 500) samples.shift();
  };

  Admin.prototype.renderProgress = function () {
    var self = this;
    var running = this.jobOrder.map(function (id) { return self.jobs[id]; }).filter(function (j) {
      return j && (!isTerminal(j.status) || (self.job && self.job.id === j.id));
    });
    var figure = this.q(".admin-reindex-chart");
    figure.hidden = running.length === 0;
    if (!running.length) return;
    var samples = (this.jobSamples || {})[this.job ? this.job.id : ""] || [];
    replaceChart(figure, progressChart(running, samples));
  };

  Admin.prototype.showJob = function (job) {
    this.job = job;
    var panel = this.q(".admin-job");
    panel.hidden = false;
    panel.setAttribute("data-job-id", job.id);
    panel.setAttribute("data-status", job.status);
    this.q(".admin-job-id").textContent = job.id;
    this.q(".admin-job-status").textContent = job.status;
    this.q(".admin-job-cancel").hidden = isTerminal(job.status);
    var total = job.docs_total || 0;
    var progress = this.q(".admin-job-progress");
    progress.max = Math.max(1, total);
    progress.value = Math.min(job.docs_done || 0, progress.max);
    if (job.status === "queued") progress.removeAttribute("value");  // indeterminate until it starts
    this.q(".admin-job-model").textContent = job.model + (job.rechunk
      ? " · re-chunked " + job.chunk_tokens + "/" + job.chunk_overlap : " · chunks reused") +
      (job.force ? " · forced" : "");
    this.q(".admin-job-version").textContent = job.new_version + (job.old_version ? " (replaces " +
      job.old_version + ")" : "");
    this.q(".admin-job-docs").textContent = (job.docs_done || 0) + " / " + total +
      (total ? " (" + Math.floor(100 * (job.docs_done || 0) / total) + "%)" : "") +
      " · embedded " + (job.docs_embedded || 0) + " docs, " + (job.chunks_embedded || 0) + " chunks";
    this.q(".admin-job-rate").textContent = fixed(job.chunks_per_s, 1);
    this.q(".admin-job-eta").textContent = isTerminal(job.status) ? "—" : duration(job.eta_s);
    this.q(".admin-job-errors").textContent = String(job.errors || 0);
    this.q(".admin-job-message").textContent = job.message || "—";
    var samples = this.q(".admin-job-error-samples");
    clear(samples);
    (job.error_samples || []).forEach(function (s) { samples.appendChild(el("li", "admin-error", s)); });
    this.renderGate(job.gate);
    this.renderJobList();
    this.renderProgress();
  };

  Admin.prototype.renderGate = function (gate) {
    var box = this.q(".admin-gate");
    box.hidden = !gate;
    if (!gate) return;
    var verdict = this.q(".admin-gate-verdict");
    verdict.textContent = gate.passed ? (gate.forced ? "passed (forced)" : "passed") : "failed";
    verdict.setAttribute("data-passed", gate.passed ? "1" : "0");
    var parts = ["tolerance " + gate.tolerance, gate.queries + " queries"];
    if (gate.sets && gate.sets.length) parts.push("sets: " + gate.sets.join(", "));
    if (gate.skipped && gate.skipped.length) parts.push("skipped: " + gate.skipped.join(", "));
    if (gate.reason) parts.push(gate.reason);
    this.q(".admin-gate-summary").textContent = parts.join(" · ");
    var body = this.q(".admin-gate-deltas tbody");
    clear(body);
    (gate.deltas || []).forEach(function (d) {
      var row = el("tr");
      if (d.regressed) row.setAttribute("data-regressed", "1");
      row.appendChild(el("td", "", d.golden_set));
      row.appendChild(el("td", "", d.mode));
      row.appendChild(el("td", "", d.metric));
      row.appendChild(el("td", "admin-num", fixed(d.old, 4)));
      row.appendChild(el("td", "admin-num", fixed(d.new, 4)));
      row.appendChild(el("td", "", d.regressed ? "regressed" : "ok"));
      body.appendChild(row);
    });
  };

  // -- background ingest (the demo's standard-library pages, /ws/admin "ingest" frames) ---------------

  Admin.prototype.onIngest = function (record) {
    if (this.ingest && (this.ingest.updated_at_ms || 0) > (record.updated_at_ms || 0)) return;
    this.ingest = record;
    var card = this.q(".admin-ingest-card");
    card.hidden = false;
    card.setAttribute("data-status", record.status);
    this.q(".admin-ingest-status").textContent = record.status;
    var total = record.docs_total || 0;
    var bar = this.q(".admin-ingest-progress");
    bar.max = Math.max(1, total);
    bar.value = Math.min(record.docs_done || 0, bar.max);
    if (!total && record.status !== "done") bar.removeAttribute("value");  // rendering: not counted yet
    this.q(".admin-ingest-docs").textContent = (record.docs_done || 0) + " / " + (total || "…") +
      (total ? " (" + Math.floor(100 * (record.docs_done || 0) / total) + "%)" : "") +
      " · " + (record.docs_indexed || 0) + " indexed, " + (record.docs_unchanged || 0) + " unchanged, " +
      (record.docs_failed || 0) + " failed";
    var estimate = record.status === "done" ? "" : " / ≈" + (record.chunks_total_est || "…");
    this.q(".admin-ingest-chunks").textContent = (record.chunks_done || 0) + estimate +
      " · embedded " + (record.chunks_embedded || 0);
    this.q(".admin-ingest-rate").textContent = fixed(record.chunks_per_s, 1);
    this.q(".admin-ingest-eta").textContent = record.status === "done" ? "done " + when(record.finished_at_ms)
      : duration(record.eta_s);
    this.q(".admin-ingest-message").textContent = record.message || "—";
    var errors = this.q(".admin-ingest-errors");
    clear(errors);
    (record.error_samples || []).forEach(function (s) { errors.appendChild(el("li", "admin-error", s)); });
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

  // -- run traces -------------------------------------------------------------------------------------

  Admin.prototype.loadTrace = function () {
    var self = this;
    var conv = this.q(".admin-trace-conv").value.trim();
    var turn = this.q(".admin-trace-turn").value.trim();
    if (!conv) return;
    var path = "/admin/conversations/" + encodeURIComponent(conv) + "/trace" +
      (turn !== "" ? "?turn=" + encodeURIComponent(turn) : "");
    this.message(".admin-trace-msg", "Loading…");
    clear(this.q(".admin-trace"));
    clear(this.q(".admin-trace-totals"));
    this.api("GET", path).then(function (data) {
      self.message(".admin-trace-msg", "");
      self.renderTrace(data);
    }).catch(function (err) {
      if (err.status !== 401) self.message(".admin-trace-msg", "No trace: " + err.message, true);
    });
  };

  function totalsText(t) {
    return [
      t.llm_calls + " LLM call" + (t.llm_calls === 1 ? "" : "s"),
      t.tokens_in + " in / " + t.tokens_out + " out tokens",
      usd(t.cost_usd),
      "LLM " + ms(t.llm_ms),
      t.tool_calls + " tool call" + (t.tool_calls === 1 ? "" : "s"),
      "tools " + ms(t.tool_ms)
    ].join(" · ");
  }

  Admin.prototype.renderTrace = function (data) {
    var container = this.q(".admin-trace");
    container.setAttribute("data-conversation", data.conversation_id);
    var grand = { llm_calls: 0, tool_calls: 0, tokens_in: 0, tokens_out: 0, cost_usd: 0, llm_ms: 0, tool_ms: 0 };
    (data.turns || []).forEach(function (turn) {
      Object.keys(grand).forEach(function (k) { grand[k] += turn.totals[k] || 0; });
      var box = el("article", "admin-turn");
      box.setAttribute("data-turn", turn.turn);
      var head = el("header", "admin-turn-head");
      head.appendChild(el("h3", "", "Turn " + turn.turn));
      head.appendChild(el("span", "admin-turn-totals admin-muted", totalsText(turn.totals)));
      box.appendChild(head);
      var steps = el("ol", "admin-steps");
      turn.steps.forEach(function (step) { steps.appendChild(renderStep(step)); });
      box.appendChild(steps);
      container.appendChild(box);
    });
    var totals = this.q(".admin-trace-totals");
    totals.appendChild(el("strong", "", "Conversation " + data.conversation_id + ": "));
    totals.appendChild(el("span", "admin-trace-grand", (data.turns || []).length + " turn(s) · " +
      totalsText(grand)));
  };

  function block(parent, className, text, collapsedLabel) {
    var value = pretty(text);
    if (collapsedLabel || value.length > LONG_TEXT_CHARS) {
      var details = el("details", "admin-collapsed");
      details.appendChild(el("summary", "", collapsedLabel || value.slice(0, 120) + "…"));
      details.appendChild(el("pre", className, value));
      parent.appendChild(details);
    } else {
      parent.appendChild(el("pre", className, value));
    }
  }

  function renderStep(step) {
    var item = el("li", "admin-step");
    item.setAttribute("data-type", step.type);
    var head = el("div", "admin-step-head");
    head.appendChild(el("span", "admin-badge admin-step-type", step.type.replace(/_/g, " ")));
    if (step.step !== undefined) head.appendChild(el("span", "admin-muted", "step " + step.step));
    var summary = el("span", "admin-step-summary");
    head.appendChild(summary);
    if (step.at_ms) head.appendChild(el("span", "admin-muted admin-step-time", when(step.at_ms)));
    item.appendChild(head);

    switch (step.type) {
      case "user_message":
        summary.textContent = (step.user || "user") + (step.tenant ? " @ " + step.tenant : "");
        block(item, "admin-text", step.text);
        break;
      case "turn_started":
        summary.textContent = "route " + step.route + (step.reason ? " — " + step.reason : "");
        break;
      case "retrieval_done":
        summary.textContent = (step.chunk_ids || []).length + " chunks from " + step.index_version +
          " · " + ms(step.latency_ms);
        block(item, "admin-text", step.query);
        break;
      case "llm_requested": {
        var messages = step.messages || [];
        summary.textContent = step.model + (step.tools && step.tools.length
          ? " · tools: " + step.tools.join(", ") : "");
        var details = el("details", "admin-prompt");
        details.appendChild(el("summary", "", "Prompt: " + messages.length + " message" +
          (messages.length === 1 ? "" : "s") + " (" + step.prompt_hash + ")"));
        messages.forEach(function (m) {
          var msg = el("div", "admin-prompt-message");
          msg.setAttribute("data-role", m.role || "");
          msg.appendChild(el("div", "admin-prompt-role", m.role || "?"));
          var content = m.content;
          var rest = {};
          Object.keys(m).forEach(function (k) { if (k !== "role" && k !== "content") rest[k] = m[k]; });
          msg.appendChild(el("pre", "admin-text", content === null || content === undefined ? "" : pretty(content)));
          if (Object.keys(rest).length) msg.appendChild(el("pre", "admin-json", pretty(rest)));
          details.appendChild(msg);
        });
        item.appendChild(details);
        break;
      }
      case "llm_completed": {
        var facts = el("dl", "admin-facts admin-llm-facts");
        fact(facts, "Model", step.model);
        fact(facts, "Tokens", step.tokens_in + " in / " + step.tokens_out + " out");
        fact(facts, "Cost", usd(step.cost_usd));
        fact(facts, "Latency", ms(step.latency_ms) + (step.first_token_ms ? " (first token " +
          ms(step.first_token_ms) + ")" : ""));
        if (step.finish_reason) fact(facts, "Finish", step.finish_reason);
        summary.textContent = step.model + " · " + (step.tokens_in + step.tokens_out) + " tokens · " +
          usd(step.cost_usd) + " · " + ms(step.latency_ms);
        item.appendChild(facts);
        if (step.text) block(item, "admin-text", step.text);
        (step.tool_calls || []).forEach(function (call) {
          var line = el("div", "admin-tool-call");
          line.appendChild(el("span", "admin-mono", "→ " + call.name));
          line.appendChild(el("code", "", call.arguments));
          item.appendChild(line);
        });
        break;
      }
      case "llm_failed":
        summary.textContent = step.code + (step.message ? ": " + step.message : "") +
          (step.recoverable ? " (recoverable)" : "");
        item.setAttribute("data-error", "1");
        break;
      case "tool_intent":
        summary.textContent = step.tool + " · risk " + step.risk + " · call " + step.call_id;
        block(item, "admin-json", step.args);
        break;
      case "tool_result":
        summary.textContent = step.tool + " · " + ms(step.latency_ms) + (step.error ? " · error" : "");
        if (step.error) {
          item.setAttribute("data-error", "1");
          block(item, "admin-text admin-error", step.error);
        }
        if (step.result) block(item, "admin-text", step.result);
        break;
      case "approval_requested":
        summary.textContent = step.tool + " · " + step.approval_id + (step.room ? " · room " + step.room : "") +
          (step.reason ? " — " + step.reason : "");
        block(item, "admin-json", step.args);
        break;
      case "approval_decided":
        summary.textContent = step.decision + " by " + step.reviewer + (step.reason ? " — " + step.reason : "");
        break;
      case "approval_expired":
        summary.textContent = step.approval_id;
        break;
      case "answer_completed":
        summary.textContent = (step.citations || []).length + " citation(s)";
        block(item, "admin-text", step.text);
        break;
      case "turn_failed":
        summary.textContent = step.code + (step.message ? ": " + step.message : "");
        item.setAttribute("data-error", "1");
        break;
      case "turn_cancelled":
        summary.textContent = step.by ? "by " + step.by : "";
        break;
      case "limit_reached":
        summary.textContent = step.limit + ": " + step.value + " of " + step.cap;
        break;
      default:
        block(item, "admin-json", step, "details");
    }
    return item;
  }

  // -- approvals audit --------------------------------------------------------------------------------

  // -- usage ----------------------------------------------------------------------------------------

  Admin.prototype.loadUsage = function () {
    var self = this;
    var params = new URLSearchParams();
    params.set("from", this.q(".admin-usage-from").value);
    params.set("to", this.q(".admin-usage-to").value);
    var tenant = this.q(".admin-usage-tenant").value.trim();
    if (tenant) params.set("tenant", tenant);
    this.message(".admin-usage-msg", "Loading…");
    this.api("GET", "/admin/usage?" + params.toString()).then(function (data) {
      self.renderUsage(data);
    }).catch(function (err) {
      self.message(".admin-usage-msg", err.message, true);
    });
    params.set("route", "qa");
    this.api("GET", "/admin/latency?" + params.toString()).then(function (data) {
      self.renderLatency(data);
    }).catch(function (err) {
      self.message(".admin-usage-msg", "Could not load latencies: " + err.message, true);
    });
  };

  // Per day, every tenant shown together: cited answers / answers, no-passage retrievals / retrievals,
  // down-votes / ratings (a gap where there is nothing to divide).
  Admin.prototype.renderQuality = function (days, totals) {
    var sums = {};
    days.forEach(function (d) { sums[d] = {answers: 0, uncited: 0, retrievals: 0, empty: 0, up: 0, down: 0}; });
    totals.forEach(function (r) {
      var s = sums[r.day];
      s.answers += r.answers; s.uncited += r.uncited_answers; s.retrievals += r.retrievals || 0;
      s.empty += r.no_passage_retrievals; s.up += r.feedback_up; s.down += r.feedback_down;
    });
    var series = [
      {name: "cited", values: days.map(function (d) { return share(sums[d].answers - sums[d].uncited, sums[d].answers); })},
      {name: "no passages", values: days.map(function (d) { return share(sums[d].empty, sums[d].retrievals); })},
      {name: "down-votes", values: days.map(function (d) { return share(sums[d].down, sums[d].up + sums[d].down); })}
    ];
    var labels = days.map(function (d) { return d.slice(5); });
    replaceChart(this.q(".admin-quality-chart"), lineChart(labels, series, function (v) {
      return Math.round(100 * v) + "%";
    }, 1));
  };

  Admin.prototype.renderLatency = function (data) {
    var points = data.points || [];
    var labels = points.map(function (p) {  // a day's first hour by its date, the others by their hour
      return p.hour.slice(11) === "00" ? p.hour.slice(5, 10) : p.hour.slice(11) + "h";
    });
    var ms = function (v) { return v >= 1000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms"; };
    var pick = function (field) { return points.map(function (p) { return p[field] === null ? null : p[field]; }); };
    replaceChart(this.q(".admin-latency-first"), lineChart(labels, [
      {name: "p50", values: pick("first_token_p50_ms")}, {name: "p95", values: pick("first_token_p95_ms")}
    ], ms));
    replaceChart(this.q(".admin-latency-answer"), lineChart(labels, [
      {name: "p50", values: pick("answer_p50_ms")}, {name: "p95", values: pick("answer_p95_ms")}
    ], ms));
  };

  Admin.prototype.renderUsage = function (data) {
    var totals = (data.rows || []).filter(function (r) { return r.user === ""; });
    var perDay = {};
    data.days.forEach(function (d) { perDay[d] = {tokens: 0, cost: 0}; });
    totals.forEach(function (r) { perDay[r.day].tokens += r.tokens; perDay[r.day].cost += r.cost_usd; });
    var charts = [[".admin-usage-tokens", "tokens", function (v) { return String(v); }],
                  [".admin-usage-cost", "cost", function (v) { return usd(v); }]];
    var self = this;
    charts.forEach(function (c) {
      replaceChart(self.q(c[0]), barChart(data.days, data.days.map(function (d) { return perDay[d][c[1]]; }), c[2]));
    });
    this.renderQuality(data.days, totals);
    var body = this.q(".admin-usage tbody");
    clear(body);
    totals.forEach(function (r) {
      var row = el("tr");
      row.setAttribute("data-day", r.day);
      row.setAttribute("data-tenant", r.tenant);
      [r.day, r.tenant, r.turns, r.tokens_in, r.tokens_out, usd(r.cost_usd), r.answers, r.uncited_answers,
       r.unsupported_sentences, r.no_passage_retrievals, r.feedback_up, r.feedback_down].forEach(function (v) {
        row.appendChild(el("td", "", v));
      });
      body.appendChild(row);
    });
    this.message(".admin-usage-msg", totals.length + " tenant-day(s), " + data.days.length + " day(s)"
      + (data.truncated ? "; more rows than shown: pick a tenant" : "") + ".");
  };

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
    // for the console's other cards (admin-documents.js)
    helpers: { el: el, clear: clear, when: when, armed: armed }
  };
})(window);
