/*
 * The operator console's documents card (GET /admin): list and filter a tenant's documents, change a
 * document's readers, delete one, the tenant's latest folder-sync reports, and the folder syncs running
 * now, live (documents done / total, rate, ETA: the console's /ws/admin `sync` frames, `admin.onSync`).
 *
 *   DocentAdminDocuments.mount(sectionElement, window.docentAdmin)
 *
 * It calls the documents API (docs/api.md) through the console's `api` (the admin key it signed in with,
 * as X-Admin-Key, acting on ?tenant=). Server data is only inserted with
 * textContent. A delete needs a second click (the console's armed buttons). Its helpers are admin.js's
 * (`DocentAdmin.helpers`), which the page loads first.
 */
(function (global) {
  "use strict";

  var PAGE = 50;
  var h = global.DocentAdmin.helpers;  // admin.js: loaded first
  var el = h.el, clear = h.clear, when = h.when;

  function button(className, text, title) {
    var b = el("button", className, text);
    b.type = "button";
    if (title) b.title = title;
    return b;
  }

  function Documents(root, admin) {
    this.root = root;
    this.admin = admin;
    this.q = function (selector) { return root.querySelector(selector); };
    this.offset = 0;
    var self = this;
    this.q(".admin-docs-form").addEventListener("submit", function (e) {
      e.preventDefault();
      self.load(0);
    });
    this.q(".admin-docs-more").addEventListener("click", function () { self.load(self.offset); });
    this.live = {};  // "tenant source" -> its <li>
    admin.onSync = function (progress) { self.showSync(progress); };
  }

  /* One /ws/admin sync frame: the source's line (created on its first frame), updated in place. */
  Documents.prototype.showSync = function (p) {
    var key = p.tenant + " " + p.source;
    var item = this.live[key];
    if (!item) {
      item = this.live[key] = el("li", "admin-sync-item");
      item.appendChild(el("span", "admin-mono admin-sync-source", p.source));
      item.appendChild(el("span", "admin-badge admin-sync-phase"));
      item.appendChild(el("progress", "admin-sync-bar"));
      item.appendChild(el("span", "admin-sync-text"));
      this.q(".admin-sync-live").appendChild(item);
    }
    item.setAttribute("data-status", p.phase === "running" ? "running" : p.phase === "completed" ? "done" : "failed");
    item.querySelector(".admin-sync-phase").textContent = p.phase;
    var bar = item.querySelector(".admin-sync-bar");
    bar.max = Math.max(p.total, 1);
    bar.value = p.total ? p.done : (p.phase === "completed" ? 1 : 0);
    var eta = p.eta_s === null || p.eta_s === undefined ? "" : ", ETA " + Math.round(p.eta_s) + " s";
    item.querySelector(".admin-sync-text").textContent =
      p.done + " / " + p.total + " documents, " + p.rate_per_s.toFixed(1) + "/s" + eta + " (tenant " + p.tenant + ")";
    if (p.phase !== "running" && p.tenant === this.tenant()) this.loadSyncs();  // its report is written
  };

  Documents.prototype.tenant = function () {
    return this.q(".admin-docs-tenant").value.trim() || "default";
  };

  Documents.prototype.message = function (text, isError) {
    var node = this.q(".admin-docs-msg");
    node.textContent = text || "";
    if (isError) node.setAttribute("data-error", "1");
    else node.removeAttribute("data-error");
  };

  /* The console's fetch (admin key, JSON, a 401 signs out) on this card's tenant. */
  Documents.prototype.api = function (method, path, body) {
    var url = path + (path.indexOf("?") >= 0 ? "&" : "?") + "tenant=" + encodeURIComponent(this.tenant());
    return this.admin.api(method, url, body);
  };

  Documents.prototype.query = function (offset) {
    var params = new URLSearchParams();
    var title = this.q(".admin-docs-title").value.trim();
    var reader = this.q(".admin-docs-reader").value.trim();
    var tag = this.q(".admin-docs-tag").value.trim();
    var path = this.q(".admin-docs-path").value.trim();
    if (title) params.set("title_prefix", title);
    if (reader) params.set("reader", reader);
    var filters = {};
    if (tag) filters.tags_any = [tag];
    if (path) filters.path_prefix = path;
    if (tag || path) params.set("filters", JSON.stringify(filters));
    params.set("limit", String(PAGE));
    params.set("offset", String(offset));
    return "/api/documents?" + params.toString();
  };

  Documents.prototype.load = function (offset) {
    var self = this;
    var body = this.q(".admin-docs tbody");
    this.message("Loading…");
    this.loadSyncs();
    return this.api("GET", this.query(offset)).then(function (page) {
      if (offset === 0) clear(body);
      page.documents.forEach(function (doc) { body.appendChild(self.row(doc)); });
      self.offset = page.next_offset || 0;
      self.q(".admin-docs-more").hidden = !page.next_offset;
      var shown = body.querySelectorAll("tr[data-doc-id]").length;
      self.message(shown + " document(s) in tenant " + self.tenant() + (page.next_offset ? ", more…" : "."));
    }).catch(function (err) {
      self.message("Could not list documents: " + err.message, true);
    });
  };

  Documents.prototype.row = function (doc) {
    var self = this;
    var row = el("tr");
    row.setAttribute("data-doc-id", doc.doc_id);
    row.appendChild(el("td", "admin-mono", doc.doc_id));
    row.appendChild(el("td", "", doc.title));
    var readers = el("td", "admin-docs-readers");
    var input = el("input", "admin-docs-readers-input");
    input.type = "text";
    input.value = (doc.readers || []).join(" ");
    input.setAttribute("aria-label", "Readers of " + doc.doc_id);
    input.spellcheck = false;
    readers.appendChild(input);
    var save = button("admin-docs-readers-save", "Save readers", "space-separated: * user:NAME group:NAME");
    save.addEventListener("click", function () { self.saveReaders(doc.doc_id, input, save); });
    readers.appendChild(save);
    row.appendChild(readers);
    var meta = doc.metadata || {};
    var described = (meta.tags || []).join(", ");
    if (meta.path) described += (described ? " · " : "") + meta.path;
    row.appendChild(el("td", "admin-muted", described || "—"));
    row.appendChild(el("td", "", when(doc.updated_at_ms)));
    var actions = el("td", "admin-actions");
    var del = button("admin-docs-delete", "Delete", "unsearchable at once in every index version");
    h.armed(del, "Confirm delete", function () { self.remove(doc.doc_id, row); });
    actions.appendChild(del);
    row.appendChild(actions);
    return row;
  };

  Documents.prototype.saveReaders = function (docId, input, save) {
    var self = this;
    var readers = input.value.split(/\s+/).filter(function (r) { return r; });
    save.disabled = true;
    this.api("PUT", "/api/documents/" + encodeURI(docId) + "/readers", { readers: readers })
      .then(function (changed) {
        self.message("Readers of " + docId + " changed (" + changed.chunks_changed + " chunks), effective now.");
      })
      .catch(function (err) { self.message("Could not change the readers of " + docId + ": " + err.message, true); })
      .then(function () { save.disabled = false; });
  };

  Documents.prototype.remove = function (docId, row) {
    var self = this;
    this.api("DELETE", "/api/documents/" + encodeURI(docId)).then(function (deleted) {
      row.remove();
      self.message(docId + " deleted (" + deleted.chunks_changed + " chunks hidden in every version).");
    }).catch(function (err) { self.message("Could not delete " + docId + ": " + err.message, true); });
  };

  Documents.prototype.loadSyncs = function () {
    var body = this.q(".admin-syncs tbody");
    return this.api("GET", "/api/sync/reports?limit=10").then(function (data) {
      clear(body);
      if (!data.reports.length) {
        var empty = el("tr", "admin-empty");
        var cell = el("td", "", "No folder sync has run for this tenant (docent sync DIR).");
        cell.colSpan = 11;
        empty.appendChild(cell);
        body.appendChild(empty);
      }
      data.reports.forEach(function (r) {
        var row = el("tr");
        row.setAttribute("data-status", r.status);
        row.appendChild(el("td", "", when(r.finished_at_ms)));
        row.appendChild(el("td", "admin-mono", r.source));
        var status = el("td");
        status.appendChild(el("span", "admin-badge", r.status));
        row.appendChild(status);
        ["files", "added", "changed", "updated", "deleted", "unchanged", "failed"].forEach(function (k) {
          row.appendChild(el("td", "admin-num", r[k]));
        });
        row.appendChild(el("td", "admin-muted", r.message || ""));
        body.appendChild(row);
      });
    }).catch(function () { clear(body); });
  };

  global.DocentAdminDocuments = {
    mount: function (root, admin) { return new Documents(root, admin); }
  };
})(window);
