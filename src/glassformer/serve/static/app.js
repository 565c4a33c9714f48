// The glassformer explorer: one page over the JSON API under /api (or, in a notebook, over the JSON
// the API would return, embedded in the output). Every model string reaches the page through
// textContent, never innerHTML, so a token cannot inject markup.
"use strict";

function glassformerExplorer(root, options) {
  options = options || {};
  const embed = options.embed || null;  // notebook: {models, responses: {key: json}}
  const $ = (name) => root.querySelector(`[data-gf="${name}"]`);
  const state = { model: 0, info: null, text: "", target: "", data: null, head: null, query: null,
                  ablate: new Set(), mode: "zero", gen: [], genStep: -1, seq: 0 };
  const stats = { requests: 0, updates: 0, errors: [] };

  // ---------------------------------------------------------------- building blocks
  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v);
    }
    for (const c of children || []) if (c != null) e.append(c);
    return e;
  }
  const fmt = (x, n) => (x === null || x === undefined) ? "" : Number(x).toFixed(n === undefined ? 4 : n);
  const show = (s) => JSON.stringify(s);  // a token as a visible string: spaces and newlines show

  function status(msg, error) {
    const s = $("status");
    s.textContent = msg;
    s.classList.toggle("error", !!error);
    if (error) stats.errors.push(msg);
  }

  function key(path, body) { return path + " " + JSON.stringify(body); }

  async function api(path, body) {
    stats.requests += 1;
    if (embed) {
      const hit = embed.responses[key(path, body)];
      if (hit === undefined) throw new Error("not in this notebook view; run `glassformer serve` to explore further");
      return hit;
    }
    const r = await fetch("/api/" + path, { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify(body) });
    const json = await r.json();
    if (!r.ok) throw new Error(json.error || r.statusText);
    return json;
  }

  function section(name, title, hint, wide) {
    const s = el("section", { class: wide ? "wide" : "", dataset: { gf: name + "-section" } },
                 [el("h2", { text: title }), hint ? el("p", { class: "hint", text: hint }) : null, el("div", { dataset: { gf: name } })]);
    root.querySelector("main").append(s);
    return s;
  }

  function heat(canvas, w, rows, cols, pick) {  // w[i][j] in [0, 1] drawn as blue cells
    canvas.width = cols; canvas.height = rows;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(cols, rows);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
      const v = Math.max(0, Math.min(1, w[i][j])), o = 4 * (i * cols + j);
      img.data[o] = 255 - 230 * v; img.data[o + 1] = 255 - 140 * v; img.data[o + 2] = 255 - 25 * v; img.data[o + 3] = 255;
      if (pick !== null && pick !== undefined && i === pick) { img.data[o] = Math.min(255, img.data[o] + 0); }
    }
    ctx.putImageData(img, 0, 0);
  }

  // ---------------------------------------------------------------- layout
  section("tokens", "tokens", "hover a token for its id; click one to make it the query");
  section("grid", "model view: layers × heads", "click a head to open it; tick its box to switch it off (ablation)", true);
  section("head", "head view", null);
  section("steps", "the four steps", "QKᵀ → ÷√d_k → mask → softmax → ·V for the clicked head and query token");
  section("ablation", "ablation", "heads ticked in the model view are switched off");
  section("lens", "logit lens", "each layer's top guess at each position, read out with the model's own head");
  section("attribution", "direct logit attribution", "what each head and block wrote into one token's logit");
  section("generation", "generation step by step", null);
  section("history", "training history", "the run's --snapshot-attention frames and its loss curve");
  section("compare", "compare", "a second prompt or a second model, side by side (mean attention per head)", true);

  // ---------------------------------------------------------------- tokens
  function tokenChips(stream, onclick, selected) {
    return stream.map((t, i) => el("span", { class: "tok" + (i === selected ? " sel" : ""), text: t.text,
      title: `#${i} id ${t.id}: ${show(t.text)}`, dataset: { pos: String(i) }, onclick: onclick ? () => onclick(i) : null }));
  }

  function drawTokens() {
    const box = $("tokens"); box.replaceChildren();
    const spec = currentSpec();
    for (const [name, stream] of Object.entries(state.data.streams)) {
      const pick = spec && spec.queries === name ? state.query : null;
      box.append(el("div", {}, [el("span", { class: "hint", text: name + ": " }),
        ...tokenChips(stream, spec && spec.queries === name ? (i) => { state.query = i; headChanged(); } : null, pick)]));
    }
  }

  // ---------------------------------------------------------------- model view
  function view(label) { return state.data.views.find((v) => v.label === label); }
  function currentSpec() { return state.head && state.info.attentions.find((a) => a.label === state.head.split(".")[0]); }
  function roleOf(label, layer, head) {
    const r = state.data.roles;
    if (!r || r.label !== label) return null;
    return r.heads.find((h) => h.layer === layer && h.head === head);
  }
  function headLabel(label, layer, head) { return `${label}.${layer}.${head}`; }

  function drawGrid() {
    const box = $("grid"); box.replaceChildren();
    for (const v of state.data.views) {
      const [L, H] = v.shape;
      const grid = el("div", { class: "grid", style: `grid-template-columns: 60px repeat(${H}, 72px)` });
      grid.append(el("span", { class: "rowlabel", text: v.label }));
      for (let h = 0; h < H; h++) grid.append(el("span", { class: "rowlabel", text: `head ${h}` }));
      for (let l = 0; l < L; l++) {
        grid.append(el("span", { class: "rowlabel", text: `layer ${l}` }));
        for (let h = 0; h < H; h++) {
          const label = headLabel(v.label, l, h), role = roleOf(v.label, l, h);
          const c = el("canvas", {});
          heat(c, v.weights[l][h], v.shape[2], v.shape[3]);
          const box2 = el("input", { type: "checkbox", title: "switch this head off", dataset: { ablate: label } });
          box2.checked = state.ablate.has(label);
          box2.addEventListener("click", (e) => { e.stopPropagation(); toggleAblation(label, box2.checked); });
          const badge = el("span", { class: "badge " + (role && role.role ? role.role : ""),
            text: role ? `${role.role ? role.role.replace("current_token", "self").replace("_token", "").replace("previous", "prev") : "—"} ${fmt(role.score, 2)}` : "" });
          const cell = el("div", { class: "cell" + (label === state.head ? " sel" : "") + (state.ablate.has(label) ? " off" : ""),
            title: label, dataset: { head: label }, onclick: () => { state.head = label; if (state.query === null) state.query = defaultQuery(); headChanged(); } },
            [c, box2, badge]);
          grid.append(cell);
        }
      }
      box.append(grid);
    }
  }

  function defaultQuery() {
    const spec = currentSpec();
    return state.data.streams[spec.queries].length - 1;
  }

  // ---------------------------------------------------------------- head view + four steps
  function drawHead() {
    const box = $("head"); box.replaceChildren();
    if (!state.head) { box.append(el("p", { class: "hint", text: "click a head in the model view" })); return; }
    const spec = currentSpec(), [, layer, head] = state.head.split(".").map(Number);
    const v = view(spec.label), q = state.data.streams[spec.queries], k = state.data.streams[spec.keys];
    const c = el("canvas", { class: "big", style: `width:${Math.min(420, 14 * k.length)}px;height:${Math.min(420, 14 * q.length)}px` });
    heat(c, v.weights[layer][head], q.length, k.length);
    const role = roleOf(spec.label, layer, head);
    box.append(el("p", { text: `${state.head} (${spec.kind}${spec.causal ? ", causal" : ""})` +
      (role ? ` — role: ${role.role || "none"} (score ${fmt(role.score, 2)})` : "") }));
    const row = v.weights[layer][head][state.query] || [];
    box.append(el("div", {}, [el("span", { class: "hint", text: `query ${state.query} ${show((q[state.query] || {}).text || "")} attends to: ` }),
      ...k.map((t, j) => el("span", { class: "tok", text: t.text, title: `id ${t.id}: weight ${fmt(row[j])}`,
                                       style: `background: rgba(26,115,232,${Math.min(1, row[j] || 0)})` }))]));
    box.append(c);
  }

  async function drawSteps() {
    const box = $("steps");
    if (!state.head) { box.replaceChildren(el("p", { class: "hint", text: "click a head" })); return; }
    const body = { model: state.model, text: state.text, head: state.head, query: state.query };
    if (state.info.needs_target) body.target = state.target;
    const seq = state.seq;
    try {
      const s = await api("steps", body);
      if (seq !== state.seq) return;
      const keys = state.data.streams[s.keys];
      const t = el("table", { dataset: { gf: "steps-table" } }, [el("tr", {}, ["key", "token", "1: q·k", `2: ÷√${s.d_k}`, "3: visible", "3: softmax"]
        .map((h, i) => el("th", { class: i === 1 ? "t" : "", text: h })))]);
      s.raw_scores.forEach((raw, j) => t.append(el("tr", { class: s.mask[j] ? "" : "masked" }, [
        el("td", { text: String(j) }), el("td", { class: "t", text: show(keys[j].text) }), el("td", { text: fmt(raw) }),
        el("td", { text: fmt(s.scaled_scores[j]) }), el("td", { text: s.mask[j] ? "yes" : "no" }), el("td", { text: fmt(s.weights[j]) })])));
      box.replaceChildren(t,
        el("p", { text: `4: z = Σ weightⱼ·vⱼ (${s.z.length} numbers): ` + s.z.slice(0, 6).map((x) => fmt(x, 3)).join(" ") + (s.z.length > 6 ? " …" : "") }),
        el("p", { class: s.ok ? "ok" : "bad", text: `checked against the model: max |z − model z| = ${s.max_diff.toExponential(1)}, ` +
          `max |weights − model weights| = ${s.weights_max_diff.toExponential(1)}` }),
        ...(s.rotary ? rotaryPart(s.rotary, keys) : []));
    } catch (e) { box.replaceChildren(el("p", { class: "bad", text: e.message })); }
  }

  // rotary positions: where the rotation enters, before step 1 (the scores above are the turned ones)
  function rotaryPart(r, keys) {
    const vec = (v, n) => "[" + v.slice(0, n || 3).map((x) => fmt(x, 2)).join(" ") + (v.length > (n || 3) ? " …]" : "]");
    const norm = (v) => fmt(Math.sqrt(v.reduce((a, x) => a + x * x, 0)), 4);
    const t = el("table", { dataset: { gf: "rotary-table" } }, [el("tr", {}, ["key", "token", "k", "k turned", "q·k/√d", "turned q·k/√d"]
      .map((h, i) => el("th", { class: i >= 1 && i <= 3 ? "t" : "", text: h })))]);
    r.scores.forEach((sc, j) => t.append(el("tr", {}, [el("td", { text: String(j) }), el("td", { class: "t", text: show(keys[j].text) }),
      el("td", { class: "t", text: vec(r.keys[j]) }), el("td", { class: "t", text: vec(r.keys_rot[j]) }),
      el("td", { text: fmt(r.scores_unrotated[j]) }), el("td", { text: fmt(sc) })])));
    return [el("p", { class: "t", style: "font-weight:600", text: "where the rotation enters" }),
      el("p", { class: "hint", text: `rotary positions: before step 1, each pair of dims of q and k turns by position × θ_j ` +
        `(${r.rotary_dim} of ${r.q.length} dims; key/value head ${r.kv_head}); lengths stay, only angles change; q·k/√d is the score without positions, turned q·k/√d is step 2's` }),
      el("p", { dataset: { gf: "rotary-q" }, text: `q = ${vec(r.q, 4)} → turned ${vec(r.q_rot, 4)}, |q| = ${norm(r.q)} = ${norm(r.q_rot)}` }),
      t,
      el("p", { class: r.ok ? "ok" : "bad", text: `checked against the model's scores: max |q_rot·k_rot/√d − model| = ${r.max_diff.toExponential(1)}` })];
  }

  function headChanged() { drawTokens(); drawGrid(); drawHead(); drawSteps(); }

  // ---------------------------------------------------------------- ablation
  function toggleAblation(label, on) {
    if (on) state.ablate.add(label); else state.ablate.delete(label);
    drawGrid(); drawAblation();
  }

  function predictionTable(rows, name) {
    return el("table", { dataset: { gf: name } }, [el("tr", {}, [el("th", { class: "t", text: "token" }), el("th", { text: "id" }), el("th", { text: "p" })]),
      ...rows.map((r) => el("tr", {}, [el("td", { class: "t", text: show(r.text) }), el("td", { text: String(r.id) }), el("td", { text: fmt(r.p) })]))]);
  }

  async function drawAblation() {
    const box = $("ablation");
    const heads = [...state.ablate];
    const mode = el("select", { dataset: { gf: "mode" }, onchange: (e) => { state.mode = e.target.value; drawAblation(); } },
      ["zero", "mean"].map((m) => { const o = el("option", { value: m, text: m }); o.selected = m === state.mode; return o; }));
    const rank = el("button", { dataset: { gf: "rank" }, text: "rank every head",
      title: "silence each head of the main attention alone and sort them by what the model loses", onclick: () => drawImportance() });
    const controls = el("div", { class: "controls" }, [el("label", { text: "mode " }, [mode]), rank,
      el("span", { text: heads.length ? "off: " + heads.join(", ") : "no heads switched off" })]);
    const ranked = importanceTable();
    if (!heads.length) { box.replaceChildren(controls, ranked); return; }
    const body = { model: state.model, text: state.text, heads, mode: state.mode, k: 5 };
    if (state.info.needs_target) body.target = state.target;
    const seq = state.seq;
    try {
      const r = await api("ablate", body);
      if (seq !== state.seq) return;
      const out = [controls, ranked];
      if (r.classes) {  // a classifier: its class probabilities before and after
        out.push(el("p", { dataset: { gf: "kl-classes" }, text: `class probabilities: KL(before ‖ after) = ${fmt(r.kl_classes)} nats` }));
        out.push(el("table", { dataset: { gf: "classes" } }, [el("tr", {}, ["class", "p before", "p after"].map((h, i) => el("th", { class: i ? "" : "t", text: h }))),
          ...r.classes.map((c) => el("tr", {}, [el("td", { class: "t", text: c.label }), el("td", { text: fmt(c.p_before) }), el("td", { text: fmt(c.p_after) })]))]));
      }
      if (r.cosine !== undefined) out.push(el("p", { dataset: { gf: "cosine" }, text: `sentence vector: cosine(before, after) = ${fmt(r.cosine, 6)}` }));
      if (r.before) {
        out.push(el("p", { dataset: { gf: "kl" }, text: `position ${r.position}: KL(before ‖ after) = ${fmt(r.kl)} nats` +
          (r.loss_before !== undefined ? `; loss on the text ${fmt(r.loss_before)} → ${fmt(r.loss_after)}` : "") }));
        out.push(el("div", { class: "pair" }, [el("div", {}, [el("p", { text: "before" }), predictionTable(r.before, "before")]),
                                                el("div", {}, [el("p", { text: "after" }), predictionTable(r.after, "after")])]));
      } else if (!r.classes) {
        out.push(el("p", { dataset: { gf: "kl" }, text: `no language-model head: the final stream at position ${r.position} changed by ${fmt(100 * r.stream_change, 1)}%` }));
      }
      box.replaceChildren(...out);
    } catch (e) { box.replaceChildren(controls, ranked, el("p", { class: "bad", text: e.message })); }
  }

  // every head silenced alone, ranked (computed on request: one forward pass per 16 heads)
  function importanceKey() { return JSON.stringify([state.model, state.text, state.target, state.mode]); }

  async function drawImportance() {
    const body = { model: state.model, text: state.text, mode: state.mode };
    if (state.info.needs_target) body.target = state.target;
    const want = importanceKey();
    status("ranking every head…");
    try {
      const r = await api("importance", body);
      if (want !== importanceKey()) return;
      state.importance = { key: want, result: r };
      status("");
      drawAblation();
    } catch (e) { status(e.message, true); }
  }

  function importanceTable() {
    const box = el("div", { dataset: { gf: "importance" } });
    const imp = state.importance;
    if (!imp || imp.key !== importanceKey()) return box;
    const r = imp.result;
    const loss = r.measure === "loss";
    box.append(el("p", { class: "hint", text: `each head silenced alone (${r.mode}); ${r.describe}` +
      (loss ? `, before ${fmt(r.before)}` : "") + "; click a row to switch that head off" }));
    const cols = ["head", loss ? "after" : "", "change", "role on random tokens"];
    if (loss) cols.push("where: each predicted token's change (red: the head's absence hurts)");
    const t = el("table", {}, [el("tr", {}, cols.map((h, i) => el("th", { class: i ? "" : "t", text: h })))]);
    const scale = loss ? Math.max(1e-9, ...r.heads.flatMap((h) => h.by_position.map(Math.abs))) : 1;
    const strip = (h) => el("td", { class: "t" }, h.by_position.map((d, i) => el("span", { class: "pc",
      title: `${show(r.target_texts[i])} at ${i + 1}: ${d >= 0 ? "+" : ""}${fmt(d, 3)} nats`,
      style: `background: ${d >= 0 ? `rgba(217,48,37,${Math.min(1, d / scale)})` : `rgba(26,115,232,${Math.min(1, -d / scale)})`}` })));
    for (const h of r.heads) {
      const role = h.role_score === null ? "(not scored)" : (h.role ? `${h.role} ${fmt(h.role_score, 2)}` : `— (best ${fmt(h.role_score, 3)})`);
      const row = el("tr", { class: (h.unnamed ? "unnamed" : "") + (state.ablate.has(h.label) ? " off" : ""), dataset: { head: h.label },
        title: h.unnamed ? "matters, but no role names it" : "", onclick: () => toggleAblation(h.label, !state.ablate.has(h.label)) },
        [el("td", { class: "t", text: h.label }), el("td", { text: loss ? fmt(h.after) : "" }), el("td", { text: (h.change >= 0 ? "+" : "") + fmt(h.change) }),
         el("td", { text: role + (h.unnamed ? "  ← matters, no named role" : "") }), loss ? strip(h) : null]);
      t.append(row);
    }
    box.append(t);
    return box;
  }

  // ---------------------------------------------------------------- lens + attribution
  async function drawLens() {
    const box = $("lens");
    if (state.info.predicts === "none") { box.replaceChildren(el("p", { class: "hint", text: "this model has no language-model head to read the stream with" })); return; }
    const body = { model: state.model, text: state.text, k: 3 };
    if (state.info.needs_target) body.target = state.target;
    const seq = state.seq;
    try {
      const r = await api("lens", body);
      if (seq !== state.seq) return;
      const t = el("table", {}, [el("tr", {}, [el("th", { text: "layer" }), ...r.tokens.map((x) => el("th", { class: "t", text: show(x) }))])]);
      r.layers.forEach((name, i) => t.append(el("tr", {}, [el("td", { text: name }), ...r.top[i].map((c) => el("td", { class: "t",
        text: `${show(c[0].token)} ${fmt(c[0].p, 2)}`, title: c.map((x) => `${show(x.token)} ${fmt(x.p, 3)}`).join("\n"),
        style: `background: rgba(26,115,232,${0.6 * c[0].p})` }))])));
      box.replaceChildren(el("p", { class: "hint", text: r.predicts === "next" ? "row t predicts token t + 1" : "row t predicts the token at t" }), t);
    } catch (e) { box.replaceChildren(el("p", { class: "bad", text: e.message })); }
  }

  async function drawAttribution(token) {
    const box = $("attribution");
    const byClass = state.info.readout === "classes";  // a classifier: a class logit's parts
    if (!state.info.can_attribute && !byClass) { box.replaceChildren(el("p", { class: "hint", text: "needs a pre-norm model with a linear head (GPT-style) or a classifier" })); return; }
    const input = el("input", { type: "text", placeholder: byClass ? `class: ${state.info.classes.join(", ")} (empty: the predicted one)` : "target token (empty: the top guess)", dataset: { gf: "attr-token" } });
    input.value = token || "";
    input.addEventListener("change", () => drawAttribution(input.value));
    const body = { model: state.model, text: state.text, token: token || null };
    if (state.info.needs_target) body.target = state.target;
    const seq = state.seq;
    try {
      const r = await api("attribution", body);
      if (seq !== state.seq) return;
      const top = r.parts.slice(0, 12), most = Math.max(1e-9, ...top.map((p) => Math.abs(p.value)));
      const t = el("table", {}, top.map((p) => el("tr", {}, [el("td", { class: "t", text: p.label }), el("td", { text: fmt(p.value, 3) }),
        el("td", { class: "t" }, [el("span", { class: "bar" + (p.value < 0 ? " neg" : ""), style: `width:${Math.round(120 * Math.abs(p.value) / most)}px` })])])));
      const what = r.class !== undefined ? `logit of class ${show(r.class)}` : `logit of ${show(r.token.text)} (id ${r.token.id}) at position ${r.position}`;
      box.replaceChildren(...[el("div", { class: "controls" }, [input]),
        el("p", { text: `${what}: ${fmt(r.logit, 3)} = parts + ${fmt(r.constant, 3)}` }), r.note ? el("p", { class: "hint", text: r.note }) : null, t].filter((x) => x));
    } catch (e) { box.replaceChildren(el("div", { class: "controls" }, [input]), el("p", { class: "bad", text: e.message })); }
  }

  // ---------------------------------------------------------------- generation
  const gen = { temperature: 0, top_k: "", top_p: "", seed: 0 };
  function number(name, step) {
    const i = el("input", { type: "number", step, dataset: { gf: "gen-" + name } });
    i.value = gen[name];
    i.addEventListener("change", () => { gen[name] = i.value; state.gen = []; state.genStep = -1; drawGeneration(); });
    return el("label", { text: name.replace("_", "-") + " " }, [i]);
  }

  async function stepGeneration(n) {
    const body = { model: state.model, text: state.text, steps: n, temperature: Number(gen.temperature) || 0, seed: Number(gen.seed) || 0 };
    if (gen.top_k !== "") body.top_k = Number(gen.top_k);
    if (gen.top_p !== "") body.top_p = Number(gen.top_p);
    try {
      const r = await api("generate", body);
      state.gen = r.steps; state.genStep = r.steps.length - 1;
      drawGeneration();
    } catch (e) { status(e.message, true); }
  }

  async function fillMask() {
    try {
      const r = await api("fill-mask", { model: state.model, text: state.text, k: 8 });
      $("generation").querySelector("[data-gf=out]").replaceChildren(...r.masks.map((m, i) => el("div", {}, [el("p", { text: `mask ${i + 1}` }), predictionTable(m, "fill")])));
    } catch (e) { $("generation").querySelector("[data-gf=out]").replaceChildren(el("p", { class: "bad", text: e.message })); }
  }

  function drawGeneration() {
    const box = $("generation");
    if (state.info.predicts === "masked") {
      box.replaceChildren(el("p", { class: "hint", text: `fill-mask: write ${state.info.mask_token} in the text` }),
        el("button", { text: "fill mask", dataset: { gf: "fill" }, onclick: fillMask }), el("div", { dataset: { gf: "out" } }));
      return;
    }
    if (state.info.predicts !== "next") { box.replaceChildren(el("p", { class: "hint", text: "this model does not generate text" })); return; }
    const n = state.gen.length;
    const controls = el("div", { class: "controls" }, [number("temperature", "0.1"), number("top_k", "1"), number("top_p", "0.05"), number("seed", "1"),
      el("button", { text: "step", dataset: { gf: "gen-step" }, onclick: () => stepGeneration(n + 1) }),
      el("button", { text: "reset", onclick: () => { state.gen = []; state.genStep = -1; drawGeneration(); } })]);
    const chips = el("div", { dataset: { gf: "gen-tokens" } }, state.gen.map((s, i) => el("span", { class: "tok" + (i === state.genStep ? " sel" : ""),
      text: s.text, title: `step ${i}: id ${s.id}`, onclick: () => { state.genStep = i; drawGeneration(); } })));
    const out = [controls, el("p", { class: "hint", text: state.info.needs_target ? "translation of the text, one token at a time" : "continuation, one token at a time" }), chips];
    const step = state.gen[state.genStep];
    if (step) {
      out.push(el("table", { dataset: { gf: "cands" } }, [el("tr", {}, ["token", "id", "p model", "p drawn"].map((h, i) => el("th", { class: i ? "" : "t", text: h }))),
        ...step.candidates.map((c) => el("tr", { class: c.id === step.id ? "chosen" : "" }, [el("td", { class: "t", text: show(c.text) }),
          el("td", { text: String(c.id) }), el("td", { text: fmt(c.p) }), el("td", { text: fmt(c.p_drawn) })]))]));
    }
    box.replaceChildren(...out);
  }

  // ---------------------------------------------------------------- history
  async function drawHistory() {
    const box = $("history");
    if (!state.info.has_history) { box.replaceChildren(el("p", { class: "hint", text: "not a run directory (no metrics.jsonl or attention snapshots)" })); return; }
    try {
      const r = await api("history", { model: state.model });
      const out = [];
      if (r.curve.length) {
        const c = el("canvas", { class: "big", dataset: { gf: "curve" } }); c.width = 360; c.height = 140;
        const ctx = c.getContext("2d"), pts = r.curve.filter((p) => p.train_loss !== undefined);
        const xs = pts.map((p) => p.step), ys = pts.map((p) => p.train_loss);
        const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
        ctx.strokeStyle = "#1a73e8"; ctx.beginPath();
        pts.forEach((p, i) => { const x = 5 + 350 * (p.step - x0) / (x1 - x0), y = 135 - 130 * (p.train_loss - y0) / (y1 - y0); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
        ctx.stroke();
        out.push(el("p", { text: `loss ${fmt(ys[0], 3)} → ${fmt(ys[ys.length - 1], 3)} over steps ${x0}..${x1}` }), c);
      }
      if (r.frames.length) {
        const label = el("p", {}), grid = el("div", { class: "grid" });
        const slider = el("input", { type: "range", min: "0", max: String(r.frames.length - 1), value: String(r.frames.length - 1), dataset: { gf: "frame" } });
        const draw = () => {
          const f = r.frames[Number(slider.value)], H = f.weights[0].length;
          label.textContent = `step ${f.step}: ${show(f.probe)}`;
          grid.style.gridTemplateColumns = `repeat(${H}, 68px)`;
          grid.replaceChildren(...f.weights.flatMap((layer) => layer.map((w) => { const c = el("canvas", { style: "width:64px;height:64px" }); heat(c, w, w.length, w[0].length); return c; })));
        };
        slider.addEventListener("input", draw); draw();
        out.push(slider, label, grid);
      }
      box.replaceChildren(...(out.length ? out : [el("p", { class: "hint", text: "no history recorded" })]));
    } catch (e) { box.replaceChildren(el("p", { class: "bad", text: e.message })); }
  }

  // ---------------------------------------------------------------- compare
  function meanGrid(r) {
    const v = r.views[0], [L, H] = v.shape;
    const grid = el("div", { class: "grid", style: `grid-template-columns: repeat(${H}, 68px)` });
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) { const c = el("canvas", { style: "width:64px;height:64px", title: `${v.label}.${l}.${h}` }); heat(c, v.weights[l][h], v.shape[2], v.shape[3]); grid.append(c); }
    return el("div", {}, [el("p", { text: Object.values(r.streams)[0].map((t) => t.text).join("|") }), grid]);
  }

  async function drawCompare() {
    const box = $("compare");
    const pick = el("select", { dataset: { gf: "cmp-model" } }, (state.models || []).map((m) => el("option", { value: String(m.index), text: m.name })));
    pick.value = String(state.cmpModel === undefined ? state.model : state.cmpModel);
    const text = el("input", { type: "text", placeholder: "second prompt", dataset: { gf: "cmp-text" } });
    text.value = state.cmpText || "";
    const go = el("button", { text: "compare", dataset: { gf: "cmp-go" } });
    const out = el("div", { class: "pair" });
    go.addEventListener("click", async () => {
      state.cmpModel = Number(pick.value); state.cmpText = text.value;
      try {
        const other = await api("attention", { model: state.cmpModel, text: state.cmpText || state.text });
        out.replaceChildren(meanGrid(state.data), meanGrid(other));
      } catch (e) { out.replaceChildren(el("p", { class: "bad", text: e.message })); }
    });
    box.replaceChildren(el("div", { class: "controls" }, [el("label", { text: "model " }, [pick]), text, go]), out);
  }

  // ---------------------------------------------------------------- the update loop
  async function update() {
    const seq = ++state.seq;
    const body = { model: state.model, text: state.text };
    if (state.info.needs_target) body.target = state.target;
    status("…");
    try {
      const t0 = performance.now();
      const data = await api("attention", body);
      if (seq !== state.seq) return;
      state.data = data;
      if (state.head && !currentSpec()) state.head = null;
      if (state.head) { const n = state.data.streams[currentSpec().queries].length; if (state.query === null || state.query >= n) state.query = n - 1; }
      drawTokens(); drawGrid(); drawHead();
      stats.updates += 1;
      status(`${Object.values(data.streams).map((s) => s.length).join(" + ")} tokens, ${Math.round(performance.now() - t0)} ms`);
      await Promise.all([drawSteps(), drawAblation(), drawLens(), drawAttribution(), drawCompare()]);
      if (seq === state.seq) root.dataset.ready = String(stats.updates);
    } catch (e) {
      if (seq === state.seq) { status(e.message, true); root.dataset.ready = "error"; }
    }
  }

  let timer = null;
  function typed() {  // debounced: one update once typing pauses
    state.text = $("text").value; state.target = $("target").value;
    state.gen = []; state.genStep = -1;
    clearTimeout(timer);
    timer = setTimeout(() => { drawGeneration(); update(); }, 250);
  }

  function chooseModel(i) {
    state.model = i; state.info = state.models[i]; state.head = null; state.query = null; state.ablate.clear();
    state.gen = []; state.genStep = -1;
    $("target").hidden = !state.info.needs_target;
    drawGeneration(); drawHistory(); update();
  }

  async function start() {
    try {
      const models = embed ? embed.models : await (await fetch("/api/models")).json();
      state.models = models.models;
      const pick = $("model");
      pick.replaceChildren(...state.models.map((m) => el("option", { value: String(m.index), text: `${m.name} (${m.family})` })));
      pick.addEventListener("change", () => chooseModel(Number(pick.value)));
      $("text").addEventListener("input", typed);
      $("target").addEventListener("input", typed);
      const given = embed ? null : new URLSearchParams(window.location.search).get("text");
      $("text").value = options.text || given || $("text").value || "The cat sat on the mat. The cat sat on the";
      if (options.target) $("target").value = options.target;
      state.text = $("text").value; state.target = $("target").value;
      if (options.head) { state.head = options.head; state.query = options.query === undefined ? null : options.query; }
      state.model = 0; state.info = state.models[0];
      $("target").hidden = !state.info.needs_target;
      drawGeneration(); drawHistory();
      await update();
      if (state.head && state.query === null) { state.query = defaultQuery(); headChanged(); }
    } catch (e) { status(e.message, true); }
  }

  const handle = { state, stats, api, update, key };
  start();
  return handle;
}

if (typeof window !== "undefined") window.glassformerExplorer = glassformerExplorer;
