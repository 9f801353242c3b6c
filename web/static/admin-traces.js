/*
 * The operator console's run-trace card (GET /admin): a conversation's (or one turn's) steps from
 * GET /admin/conversations/{id}/trace — LLM calls with their tokens, cost and latency, tool intents and
 * results, approvals, retrievals — with the turn's totals. Methods of admin.js's `Admin`, which the page
 * loads first; server data is only inserted with textContent.
 */
(function (global) {
  "use strict";

  var LONG_TEXT_CHARS = 400;
  var Admin = global.DocentAdmin.Admin;
  var h = global.DocentAdmin.helpers;
  var el = h.el, clear = h.clear, when = h.when, ms = h.ms, usd = h.usd, pretty = h.pretty, fact = h.fact;

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
})(window);
