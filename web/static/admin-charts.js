/*
 * The operator console's charts, drawn as inline SVG (no chart library, nothing from a CDN):
 *
 *   DocentCharts.bar(days, values, format)           one bar per day, scaled to the largest
 *   DocentCharts.line(labels, series, format, top)   one line per {name, values} series (null: a gap)
 *   DocentCharts.progress(jobs, samples)             a bar per running job, one job's progress line
 *   DocentCharts.replace(figure, chart)              swap the chart inside a <figure>
 *
 * Text from the server is only set with textContent.
 */
(function (global) {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var CHART_W = 420, CHART_H = 140, CHART_PAD = 24;

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
  function replaceChart(figure, chart) {
    var old = figure.querySelector("svg");
    if (old) figure.removeChild(old);
    figure.appendChild(chart);
  }

  global.DocentCharts = {bar: barChart, line: lineChart, progress: progressChart, replace: replaceChart};
})(window);
