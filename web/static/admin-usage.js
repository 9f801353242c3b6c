/*
 * The operator console's usage card (GET /admin): tokens and cost per day (bars), the quality signals per
 * day and the Q&A latency percentiles per hour (lines), and the per tenant-day table, from GET /admin/usage
 * and GET /admin/latency. Methods of admin.js's `Admin`; charts from admin-charts.js.
 */
(function (global) {
  "use strict";

  var Admin = global.DocentAdmin.Admin;
  var h = global.DocentAdmin.helpers;
  var el = h.el, clear = h.clear, usd = h.usd;
  var barChart = global.DocentCharts.bar, lineChart = global.DocentCharts.line;
  var replaceChart = global.DocentCharts.replace;

  function share(part, whole) {
    return whole > 0 ? part / whole : null;
  }

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
})(window);
