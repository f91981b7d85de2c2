/* Lineage drawn as a layered graph in SVG: parents left, children right.
 *
 * Layout (a small Sugiyama): layer = longest path from a source inside the drawn set;
 * order within a layer by barycenter sweeps (down, then up, a few times), which keeps
 * most edges from crossing; edges are cubic curves from a parent's right side to a
 * child's left side. Records are content-addressed, so the graph is acyclic; a cycle
 * (a damaged catalog) would only put its nodes in layer 0, never loop.
 */
"use strict";

const CasLineage = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 190, H = 44, GAP_X = 70, GAP_Y = 18, PAD = 16;

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function clip(text, n) {
    return text.length > n ? "\u2026" + text.slice(text.length - n + 1) : text;
  }

  function layers(ids, edges) {
    const parents = new Map(ids.map((id) => [id, []]));
    const children = new Map(ids.map((id) => [id, []]));
    for (const e of edges) {
      if (parents.has(e.to) && children.has(e.from) && e.from !== e.to) {
        parents.get(e.to).push(e.from);
        children.get(e.from).push(e.to);
      }
    }
    const indegree = new Map(ids.map((id) => [id, parents.get(id).length]));
    const layer = new Map(ids.map((id) => [id, 0]));
    const queue = ids.filter((id) => indegree.get(id) === 0);
    while (queue.length) {
      const id = queue.shift();
      for (const c of children.get(id)) {
        layer.set(c, Math.max(layer.get(c), layer.get(id) + 1));
        indegree.set(c, indegree.get(c) - 1);
        if (indegree.get(c) === 0) queue.push(c);
      }
    }
    return { layer, parents, children };
  }

  function order(ids, byId, info) {
    const count = Math.max(0, ...ids.map((id) => info.layer.get(id))) + 1;
    const rows = Array.from({ length: count }, () => []);
    const sorted = ids.slice().sort((a, b) =>
      String(byId.get(a).created_at).localeCompare(String(byId.get(b).created_at)));
    for (const id of sorted) rows[info.layer.get(id)].push(id);
    const pos = new Map();
    const place = () => rows.forEach((row) => row.forEach((id, i) => pos.set(id, i)));
    place();
    const mean = (list, fallback) =>
      list.length ? list.reduce((s, id) => s + pos.get(id), 0) / list.length : fallback;
    for (let sweep = 0; sweep < 4; sweep++) {
      for (let r = 1; r < rows.length; r++) {
        rows[r].sort((a, b) => mean(info.parents.get(a), pos.get(a)) - mean(info.parents.get(b), pos.get(b)));
        place();
      }
      for (let r = rows.length - 2; r >= 0; r--) {
        rows[r].sort((a, b) => mean(info.children.get(a), pos.get(a)) - mean(info.children.get(b), pos.get(b)));
        place();
      }
    }
    return rows;
  }

  /* Draw `data` (the /api/v1/lineage answer: nodes, edges, id) into `box`;
   * `onOpen(id)` is called when a node is clicked or activated with Enter. */
  function draw(box, data, onOpen) {
    box.textContent = "";
    const byId = new Map(data.nodes.map((n) => [n.id, n]));
    const ids = data.nodes.map((n) => n.id);
    const info = layers(ids, data.edges);
    const rows = order(ids, byId, info);
    const tallest = Math.max(...rows.map((r) => r.length));
    const width = Math.max(460, PAD * 2 + rows.length * W + (rows.length - 1) * GAP_X);
    const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y + 18;
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": "Lineage graph", id: "lineage-svg" }, box);
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
                                  markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#98a2b3" }, marker);

    const xy = new Map();
    rows.forEach((row, r) => {
      const offset = ((tallest - row.length) * (H + GAP_Y)) / 2;
      row.forEach((id, i) => xy.set(id, { x: PAD + r * (W + GAP_X), y: PAD + offset + i * (H + GAP_Y) }));
    });

    const edgeLayer = el("g", { class: "edges" }, svg);
    for (const e of data.edges) {
      const a = xy.get(e.from), b = xy.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      el("path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
                   "marker-end": "url(#arrow)", "data-from": e.from, "data-to": e.to }, edgeLayer);
    }

    const nodeLayer = el("g", { class: "nodes" }, svg);
    for (const id of ids) {
      const n = byId.get(id), p = xy.get(id);
      const g = el("g", { class: `node ${n.side}`, "data-id": id, "data-name": n.name,
                          transform: `translate(${p.x},${p.y})`, tabindex: 0, role: "link",
                          "aria-label": `${n.side} ${n.name}` }, nodeLayer);
      const title = el("title", {}, g);
      title.textContent = `${n.name}\n${n.artifact_type}\n${id}\n${n.created_at}`;
      el("rect", { width: W, height: H, rx: 6 }, g);
      el("text", { x: 10, y: 18, class: "label" }, g).textContent = clip(n.name, 27);
      el("text", { x: 10, y: 34, class: "kind" }, g).textContent =
        `${n.artifact_type} \u00b7 ${id.slice(0, 8)}`;
      const open = () => onOpen(id);
      g.addEventListener("click", open);
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
    }

    const legend = el("g", { class: "legend", transform: `translate(${PAD},${height - 8})` }, svg);
    el("text", {}, legend).textContent =
      "parents \u2190  selected  \u2192 children    click a node to open it";
    return svg;
  }

  return { draw, layers, order };
})();
