// Trajectory viewer: renders the embedded samples with textContent only (model text is never parsed as HTML).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("igpo-data").textContent);
  const list = document.getElementById("traj-list");
  if (!list) return;
  const samples = data.samples;
  const MAX_SHOWN = 200;
  const $ = (id) => document.getElementById(id);
  const stepSel = $("f-step"), caseBox = $("f-case"), thr = $("f-thr"), text = $("f-text"), count = $("f-count");
  // IG bars share one scale over the whole page, so bars of different trajectories compare
  const igScale = samples.reduce((m, s) => s.turns.reduce((mm, t) => Math.max(mm, Math.abs(t.ig || 0)), m), 1e-12);

  function el(tag, cls, txt) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (txt !== undefined && txt !== null) e.textContent = txt;
    return e;
  }
  function num(x, signed) {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    const s = a !== 0 && a < 1e-3 ? x.toExponential(2) : x.toFixed(3);
    return signed && x >= 0 ? "+" + s : s;
  }
  function meter(label, barCls, fill, value) {
    const m = el("span", "meter");
    m.append(el("span", "lab", label));
    const bar = el("span", "bar " + barCls);
    if (fill) bar.append(fill);
    m.append(bar, el("span", "val", value));
    return m;
  }
  function beliefMeter(label, p) {
    const f = el("span", "fill");
    f.style.width = (100 * Math.min(1, Math.max(0, p))).toFixed(2) + "%";
    return meter(label, "belief-bar", f, num(p));
  }
  function igMeter(label, r) {
    const f = el("span", "fill " + (r >= 0 ? "pos" : "neg"));
    f.style.width = (50 * Math.min(1, Math.abs(r) / igScale)).toFixed(2) + "%";
    const m = meter(label, "ig-bar", f, num(r, true));
    m.dataset.ig = String(r);
    return m;
  }
  function isCase(s, threshold) {
    return s.f1 === 0 && s.turns.some((t) => t.ig !== null && t.ig >= threshold);
  }
  function fold(title, body) {
    const d = el("details");
    d.append(el("summary", null, title), el("pre", null, body));
    return d;
  }
  function action(t, s) {
    const a = el("div", "action");
    if (t.kind === "tool_call") {
      a.append(el("code", null, (t.tool || "?") + "(" + JSON.stringify(t.arguments || {}) + ")"));
      if (t.call_error) a.append(el("span", "err", t.call_error));
      else if (t.tool_error) a.append(el("span", "err", t.tool_error));
    } else if (t.kind === "answer") {
      a.append(el("span", null, "answer "), el("code", null, s.answer));
    } else {
      a.append(el("span", "err", "format error: no tool call and no answer"));
    }
    return a;
  }
  function card(s, open, threshold) {
    const d = el("details", "traj");
    d.open = open;
    const sum = el("summary");
    const good = s.f1 >= 0.999, bad = s.f1 === 0;
    sum.append(el("span", "badge " + (good ? "good" : bad ? "bad" : ""), "F1 " + s.f1.toFixed(2)));
    if (isCase(s, threshold)) sum.append(el("span", "badge case", "wrong, but IG ≥ " + threshold));
    sum.append(el("span", "q", s.question));
    const chips = el("span", "chipsig");
    s.turns.forEach((t, k) => {
      const c = el("span");
      c.title = "turn " + (k + 1) + ": " + (t.ig === null ? "no IG (last turn)" : "IG " + num(t.ig, true));
      const a = t.ig === null ? 0 : Math.min(1, Math.abs(t.ig) / igScale);
      c.style.background = t.ig === null ? "#d5d9de" : (t.ig >= 0 ? "rgba(31,157,85," : "rgba(214,69,69,") + (0.15 + 0.85 * a) + ")";
      chips.append(c);
    });
    sum.append(chips, el("span", "where", "step " + s.step + " · group " + s.group + " · " + s.source));
    d.append(sum);

    const body = el("div", "body");
    const facts = el("div", "facts");
    const fact = (k, v) => { const f = el("span"); f.append(el("b", null, k), document.createTextNode(v)); facts.append(f); };
    fact("gold", s.golds.join(" | "));
    fact("answer", s.answer === null ? "none (" + s.finish + ")" : s.answer);
    fact("outcome reward", num(s.outcome, true));
    fact("finish", s.finish);
    body.append(facts);
    if (s.p0 !== null) {
      const row = el("div", "turn");
      const meters = el("div", "meters");
      meters.append(beliefMeter("p0", s.p0));
      row.append(el("span", "idx", "question"), meters);
      body.append(row);
    }
    s.turns.forEach((t, k) => {
      const row = el("div", "turn");
      row.dataset.turn = String(k + 1);
      const right = el("div");
      right.append(action(t, s));
      const meters = el("div", "meters");
      if (t.belief !== null) meters.append(beliefMeter("p" + (k + 1), t.belief));
      if (t.ig !== null) meters.append(igMeter("r" + (k + 1), t.ig));
      meters.append(el("span", "meter", "A " + num(t.advantage, true)));
      right.append(meters);
      row.append(el("span", "idx", "turn " + (k + 1)), right);
      row.append(fold("generated text (" + t.generated_tokens + " tokens)", t.text));
      if (t.tool_result !== null) row.append(fold("tool result", t.tool_result));
      body.append(row);
    });
    d.append(body);
    return d;
  }
  function render() {
    const step = stepSel.value, threshold = parseFloat(thr.value), query = text.value.trim().toLowerCase();
    const shown = samples.filter((s) =>
      (step === "" || String(s.step) === step) &&
      (!caseBox.checked || isCase(s, isNaN(threshold) ? data.threshold : threshold)) &&
      (!query || JSON.stringify([s.question, s.answer, s.golds, s.turns.map((t) => t.arguments)]).toLowerCase().includes(query)));
    const th = isNaN(threshold) ? data.threshold : threshold;
    list.replaceChildren(...shown.slice(0, MAX_SHOWN).map((s, i) => card(s, i < 2, th)));
    if (shown.length > MAX_SHOWN) list.append(el("div", "more", "first " + MAX_SHOWN + " shown; narrow the filters"));
    count.textContent = shown.length + " of " + samples.length + " trajectories";
  }
  [...new Set(samples.map((s) => s.step))].sort((a, b) => a - b).forEach((st) => {
    const o = el("option", null, "step " + st);
    o.value = String(st);
    stepSel.append(o);
  });
  [stepSel, caseBox, thr, text].forEach((c) => c.addEventListener("input", render));
  render();
})();
