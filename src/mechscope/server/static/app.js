// mechscope dashboard: plain JavaScript, no libraries. Every string from the server is put
// into the page with textContent (never innerHTML), so token text always shows as text.
"use strict";
const mechscope = (() => {
  const hover = () => document.getElementById("hover");
  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const svgEl = (tag, attrs = {}) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  const visible = (t) => {
    const shown = t.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
    return shown.trim() === "" || shown !== t ? shown.replace(/ /g, "·") : shown;
  };

  // Hover box: a token's text and activation
  document.addEventListener("mouseover", (e) => {
    const t = e.target.closest && e.target.closest(".tok[data-act]");
    const box = hover();
    if (!box) return;
    if (!t) { box.hidden = true; return; }
    box.textContent = JSON.stringify(t.textContent) + "  act " + Number(t.dataset.act).toPrecision(4);
    box.hidden = false;
  });
  document.addEventListener("mousemove", (e) => {
    const box = hover();
    if (box && !box.hidden) { box.style.left = e.clientX + 12 + "px"; box.style.top = e.clientY + 12 + "px"; }
  });

  function latentLinks(store, pairs) {
    const cell = el("td");
    for (const [id, act] of pairs) {
      const a = el("a", { href: `/feature/${encodeURIComponent(store)}/${id}`, class: "latent", "data-latent": id },
        `${id}`);
      cell.append(a, document.createTextNode(` ${act.toPrecision(3)}  `));
    }
    return cell;
  }

  function renderPrompt(data, root) {
    root.replaceChildren();
    const tokens = el("div", { id: "tokens" });
    data.tokens.forEach((t, i) => {
      const span = el("span", { class: "ptok", "data-index": i }, visible(t));
      if (data.probe) span.title = `P(right) ${data.probe[i]}`;
      tokens.append(span);
    });
    root.append(el("h2", {}, "tokens"), tokens);
    for (const [store, perToken] of Object.entries(data.latents)) {
      const table = el("table", { class: "latents", "data-store": store });
      const head = el("tr");
      head.append(el("th", {}, "token"), el("th", {}, `top latents of ${store} (activation)`));
      table.append(head);
      perToken.forEach((pairs, i) => {
        const row = el("tr", { "data-index": i });
        row.append(el("td", {}, visible(data.tokens[i])), latentLinks(store, pairs));
        table.append(row);
      });
      root.append(el("h2", {}, `latents: ${store}`), table);
    }
    if (data.probe) {
      const row = el("table", { class: "strip", id: "probe" });
      const tr = el("tr");
      tr.append(el("th", {}, "P(right)"));
      data.probe.forEach((p) => tr.append(el("td", { style: `background:rgba(46,125,50,${p})` }, p.toFixed(2))));
      row.append(tr);
      root.append(el("h2", {}, "is the model right? (confidence probe)"), row);
    }
    root.append(el("h2", {}, "logit lens (top token, probability)"), lensStrip(data));
    root.append(el("h2", {}, "attention heads"), attention(data));
  }

  function lensStrip(data) {
    const table = el("table", { class: "strip", id: "lens" });
    const head = el("tr");
    head.append(el("th", {}, "layer"));
    data.tokens.forEach((t) => head.append(el("th", {}, visible(t))));
    table.append(head);
    data.lens.layers.forEach((layer, li) => {
      const tr = el("tr");
      tr.append(el("th", {}, layer));
      data.lens.top[li].forEach((t, p) => {
        const prob = data.lens.prob[li][p];
        tr.append(el("td", { style: `background:rgba(21,101,192,${prob * 0.6})`, title: `p=${prob}` }, visible(t)));
      });
      table.append(tr);
    });
    return table;
  }

  function attention(data) {
    const box = el("div", { id: "attention" });
    const layer = el("select", { id: "att-layer" });
    const head = el("select", { id: "att-head" });
    data.attention.forEach((_, l) => layer.append(el("option", { value: l }, `layer ${l}`)));
    data.attention[0].forEach((_, h) => head.append(el("option", { value: h }, `head ${h}`)));
    const grid = el("div", { class: "heat" });
    const draw = () => {
      const pattern = data.attention[+layer.value][+head.value];
      grid.replaceChildren();
      grid.style.gridTemplateColumns = `repeat(${pattern.length}, 14px)`;
      pattern.forEach((row, q) => row.forEach((v, k) => {
        grid.append(el("div", {
          style: `background:rgba(106,27,154,${v})`,
          title: `${JSON.stringify(data.tokens[q])} → ${JSON.stringify(data.tokens[k])}: ${v}`,
        }));
      }));
    };
    layer.onchange = draw;
    head.onchange = draw;
    box.append(layer, head, el("p", { class: "note" }, "rows: query positions; columns: keys"), grid);
    draw();
    return box;
  }

  function promptPage() {
    const form = document.getElementById("prompt-form");
    const status = document.getElementById("status");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const stores = [...form.querySelectorAll("input[name=store]:checked")].map((x) => x.value);
      status.textContent = "running…";
      const response = await fetch("/api/prompt", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: document.getElementById("prompt").value, stores }),
      });
      const data = await response.json();
      if (!response.ok) { status.textContent = data.error.message; return; }
      status.textContent = `${data.tokens.length} tokens`;
      renderPrompt(data, document.getElementById("result"));
    });
  }

  async function circuitPage() {
    const info = document.getElementById("circuit-info");
    const svg = document.getElementById("circuit");
    const data = await (await fetch(`/api/circuit/${encodeURIComponent(info.dataset.name)}`)).json();
    info.textContent = `${data.method} circuit of ${data.model} (${data.metric}): ${data.nodes.length} nodes, ` +
      `${data.edges.length} edges; click a node to keep its edges, width = |score|`;
    const layers = [...new Set(data.nodes.map((n) => n.layer))].sort((a, b) => a - b);
    const width = svg.clientWidth || 1000, height = 540;
    const pos = {};
    layers.forEach((layer, li) => {
      const row = data.nodes.filter((n) => n.layer === layer);
      row.forEach((n, i) => {
        pos[n.id] = { x: (width * (i + 1)) / (row.length + 1), y: height - 20 - (li * (height - 40)) / Math.max(1, layers.length - 1) };
      });
    });
    const top = Math.max(1e-12, ...data.edges.map((e) => Math.abs(e.score)));
    const colours = { q: "#1565c0", k: "#2e7d32", v: "#c62828", "": "#616161" };
    const lines = data.edges.map((e) => {
      const a = pos[e.from], b = pos[e.to];
      // q, k and v edges between the same two nodes bend apart instead of hiding each other
      const bend = { q: 0, k: 14, v: -14 }[e.channel] || 0;
      const len = Math.hypot(b.x - a.x, b.y - a.y) || 1;
      const cx = (a.x + b.x) / 2 - (bend * (b.y - a.y)) / len, cy = (a.y + b.y) / 2 + (bend * (b.x - a.x)) / len;
      const line = svgEl("path", { d: `M ${a.x} ${a.y} Q ${cx} ${cy} ${b.x} ${b.y}`, fill: "none",
        stroke: colours[e.channel] || "#616161", "stroke-width": 0.5 + (4 * Math.abs(e.score)) / top,
        "stroke-dasharray": e.score < 0 ? "5 3" : "none", "data-from": e.from, "data-to": e.to });
      const title = svgEl("title");
      title.textContent = `${e.from} → ${e.receiver}: ${e.score.toPrecision(3)}`;
      line.append(title);
      svg.append(line);
      return line;
    });
    for (const n of data.nodes) {
      const g = svgEl("g", { "data-node": n.id });
      g.append(svgEl("circle", { cx: pos[n.id].x, cy: pos[n.id].y, r: 6 }));
      const label = svgEl("text", { x: pos[n.id].x + 8, y: pos[n.id].y + 3 });
      label.textContent = n.id;
      g.append(label);
      g.addEventListener("click", () => {
        lines.forEach((l) => l.classList.toggle("dim", l.dataset.from !== n.id && l.dataset.to !== n.id));
        document.getElementById("edge-info").textContent = `${n.id}: ` + data.edges
          .filter((e) => e.from === n.id || e.to === n.id).map((e) => `${e.from}→${e.receiver} ${e.score.toPrecision(3)}`)
          .join(", ");
      });
      svg.append(g);
    }
    const legend = svgEl("text", { x: 10, y: 16 });
    legend.textContent = "edge colour: into a query blue, key green, value red, elsewhere grey; dashed: negative score";
    svg.append(legend);
  }

  return { promptPage, circuitPage, renderPrompt };
})();
