/*
 * The operator console's reindex card (GET /admin): start a rebuild, the jobs with their live progress
 * (/ws/admin "reindex" frames: a bar per running job and the shown job's line, drawn by admin-charts.js),
 * its gate report, cancel; and the background demo ingest's progress ("ingest" frames). Methods of
 * admin.js's `Admin`, which the page loads first; server data is only inserted with textContent.
 */
(function (global) {
  "use strict";

  var Admin = global.DocentAdmin.Admin;
  var charts = global.DocentCharts;
  var h = global.DocentAdmin.helpers;
  var el = h.el, clear = h.clear, when = h.when, duration = h.duration, fixed = h.fixed;
  var isTerminal = h.isTerminal;

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
    charts.replace(figure, charts.progress(running, samples));
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
})(window);
