/* cas serve's page: a name tree, artifact pages, search and lineage, over /api/v1.
 *
 * Routes live in the URL's fragment: #/ (recent), #/a/<ref> (an artifact; <ref> is a
 * name or id, encoded as one component), #/a/<ref>/<path> (a folder inside a folder
 * artifact), #/s/<query> (search). Every text from the store goes in with textContent,
 * never as HTML: names, tags and metadata are data, not markup.
 */
"use strict";

const main = document.getElementById("main");
const treeRoot = document.getElementById("tree-root");
const searchInput = document.getElementById("search-input");

// -- small helpers --------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const segs = (name) => name.split("/").map(encodeURIComponent).join("/");
const artifactHash = (ref, path) =>
  "#/a/" + encodeURIComponent(ref) + (path ? "/" + segs(path) : "");
const contentUrl = (id, path) =>
  "/api/v1/content/" + id + (path ? "?path=" + encodeURIComponent(path) : "");
const short = (id) => (id ? id.slice(0, 12) : "");

function when(text) {
  if (text === null || text === undefined || text === "") return "";
  const d = typeof text === "number" ? new Date(text * 1000) : new Date(text);
  return isNaN(d) ? String(text) : d.toLocaleString();
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : String(v)) + " " + units[i];
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const res = await fetch("/api/v1" + path, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText);
  return body;
}

function idLink(id) {
  return id ? h("a", { href: artifactHash(id), class: "mono", title: id, text: short(id) }) : h("span", { class: "empty", text: "none" });
}

function tags(map) {
  const keys = Object.keys(map || {}).sort();
  if (!keys.length) return h("span", { class: "empty", text: "no tags" });
  return h("span", {}, ...keys.map((k) => h("a", {
    class: "tag", href: "#/s/" + encodeURIComponent(`${k}:"${String(map[k]).replace(/["\\]/g, "\\$&")}"`),
    text: `${k}: ${map[k]}`,
  })));
}

function show(...nodes) { main.textContent = ""; main.append(...nodes); }

function fail(err) {
  if (err instanceof ApiError && err.status === 401) return askToken();
  show(h("div", { class: "error", id: "error", text: err.message || String(err) }));
}

function askToken() {
  const input = h("input", { type: "password", id: "token-input", placeholder: "token", autocomplete: "off" });
  const form = h("form", { class: "token-form", on: { submit: (ev) => {
    ev.preventDefault();
    document.cookie = "cas_token=" + encodeURIComponent(input.value.trim()) + "; path=/; SameSite=Strict";
    location.reload();
  } } },
  h("p", { text: "This server asks for its token before it shows the store (the file 'cas serve' printed at start)." }),
  input, h("button", { type: "submit", text: "Use token" }));
  show(h("h1", { text: "Token needed" }), form);
}

function table(head, rows, attrs) {
  return h("table", attrs || {},
    head ? h("thead", {}, h("tr", {}, ...head.map((t) => h("th", { text: t })))) : null,
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c) =>
      c instanceof Node ? h("td", {}, c) : h("td", { text: c ?? "" }))))));
}

function artifactRows(items) {
  return items.map((a) => [
    h("a", { href: artifactHash(a.id), class: "result-name", "data-id": a.id, text: a.name }),
    a.artifact_type, tags(a.tags), bytes(a.size), when(a.created_at), idLink(a.id),
  ]);
}

// -- the name tree ----------------------------------------------------------------------

async function loadLevel(list, prefix, after) {
  const q = "/names?delimiter=/&limit=500&prefix=" + encodeURIComponent(prefix) +
            (after ? "&after=" + encodeURIComponent(after) : "");
  const page = await api(q);
  for (const p of page.prefixes) list.append(folderItem(p));
  for (const n of page.names) {
    list.append(h("li", { class: "tree-name", "data-name": n },
      h("a", { href: artifactHash(n), text: n.slice(prefix.length) })));
  }
  if (page.next) {
    const more = h("li", { class: "more", text: "more\u2026", on: { click: () => {
      more.remove(); loadLevel(list, prefix, page.next).catch(fail);
    } } });
    list.append(more);
  }
  if (!prefix && !page.prefixes.length && !page.names.length) {
    list.append(h("li", { class: "empty", text: "no names yet" }));
  }
}

function folderItem(prefix) {
  const label = prefix.slice(0, -1).split("/").pop() + "/";
  const children = h("ul", { class: "tree-level" });
  const item = h("li", { class: "tree-folder", "data-prefix": prefix });
  let loaded = false;
  const toggle = h("span", { class: "toggle", tabindex: 0, role: "button", text: label, on: {
    click: () => {
      item.classList.toggle("open");
      children.hidden = !item.classList.contains("open");
      if (!loaded) { loaded = true; loadLevel(children, prefix).catch(fail); }
    },
    keydown: (ev) => { if (ev.key === "Enter") toggle.click(); },
  } });
  children.hidden = true;
  item.append(toggle, children);
  return item;
}

// -- views --------------------------------------------------------------------------------

async function viewRecent() {
  const page = await api("/artifacts?limit=50");
  show(h("h1", { text: "Recent artifacts" }),
       page.items.length ? table(["name", "type", "tags", "size", "created", "id"], artifactRows(page.items), { id: "recent" })
                         : h("p", { class: "empty", text: "The catalog is empty." }));
}

async function viewSearch(query) {
  searchInput.value = query;
  const page = await api("/search?limit=200&q=" + encodeURIComponent(query));
  show(h("h1", { text: "Search" }),
       h("div", { class: "sub", text: `${page.count} result${page.count === 1 ? "" : "s"} for ${query || "(everything)"}` }),
       page.items.length ? table(["name", "type", "tags", "size", "created", "id"], artifactRows(page.items), { id: "results" })
                         : h("p", { class: "empty", id: "no-results", text: "Nothing matches." }));
}

async function viewArtifact(ref, path) {
  const meta = await api("/artifacts/" + segs(ref));
  document.title = meta.name + " \u00b7 cas";
  document.querySelectorAll(".tree-name.current").forEach((n) => n.classList.remove("current"));
  const sources = ["source_project", "source_pipeline", "source_run_id", "source_step"]
    .filter((k) => meta[k]).map((k) => [k.replace("source_", ""), meta[k]]);
  const rows = [
    ["id", h("code", { text: meta.id })],
    ["type", meta.type],
    ["content id", meta.content_id ? h("code", { text: meta.content_id }) : h("span", { class: "empty", text: "registered without data" })],
    ["size", bytes(meta.size)],
    ["created", when(meta.created_at)],
    ["tags", tags(meta.tags)],
    ["parents", meta.parent_ids.length ? h("span", {}, ...meta.parent_ids.map((p) => h("span", {}, idLink(p), " "))) : h("span", { class: "empty", text: "none" })],
    ...sources,
  ];
  const actions = h("div", { class: "actions" });
  if (meta.kind === "file") {
    actions.append(h("a", { class: "download", id: "download", href: contentUrl(meta.id), download: "", text: "Download" }));
  }
  const userMeta = Object.keys(meta.metadata || {}).length
    ? h("pre", { class: "json", id: "user-metadata", text: JSON.stringify(meta.metadata, null, 2) })
    : h("p", { class: "empty", text: "no metadata" });
  const sections = [
    h("h1", { id: "artifact-name", text: meta.name }),
    h("div", { class: "sub" }, h("span", { text: `${meta.type} \u00b7 ` }), h("code", { text: meta.id })),
    table(null, rows, { class: "kv", id: "meta" }), actions,
    h("h2", { class: "section", text: "Metadata" }), userMeta,
  ];
  const filesBox = h("div", { id: "files-box" });
  if (meta.kind === "folder") sections.push(h("h2", { class: "section", text: "Files" }), filesBox);
  const lineageBox = h("div", { id: "lineage-box" });
  const depth = h("select", { id: "lineage-depth", "aria-label": "lineage depth" },
    ...[["1", "1 hop"], ["3", "3 hops"], ["all", "all"]].map(([v, t]) => h("option", { value: v, text: t })));
  depth.value = "3";
  sections.push(h("h2", { class: "section", text: "Lineage" }),
    h("div", { class: "lineage-controls" }, h("span", { text: "depth" }), depth), lineageBox,
    h("h2", { class: "section", text: "History of this name" }), h("div", { id: "history-box" }));
  show(...sections);

  const historyBox = document.getElementById("history-box");
  const drawLineage = () => api(`/lineage/${meta.id}?depth=${depth.value}`)
    .then((data) => {
      CasLineage.draw(lineageBox, data, (id) => { location.hash = artifactHash(id); });
      if (data.truncated) lineageBox.append(h("p", { class: "empty", text: "(more nodes than shown)" }));
    })
    .catch((err) => { lineageBox.textContent = err.message; });
  depth.addEventListener("change", drawLineage);
  const jobs = [drawLineage(), showHistory(historyBox, meta)];
  if (meta.kind === "folder") jobs.push(showFiles(filesBox, meta, path || ""));
  await Promise.all(jobs);
}

async function showHistory(box, meta) {
  let page;
  try { page = await api("/history/" + segs(meta.name)); } catch (err) { box.textContent = err.message; return; }
  if (!page.entries.length) { box.append(h("p", { class: "empty", text: "no history (reached by id only)" })); return; }
  box.append(table(["when", "who", "old", "new", "message"], page.entries.map((e) => [
    when(e.time), e.who, idLink(e.old), idLink(e.new), e.message,
  ]), { id: "history" }));
}

async function showFiles(box, meta, path) {
  const page = await api(`/files/${meta.id}?path=${encodeURIComponent(path)}`);
  const crumbs = h("div", { class: "breadcrumbs", id: "breadcrumbs" },
    h("a", { href: artifactHash(meta.name), text: meta.name.split("/").pop() + "/" }));
  let acc = "";
  for (const part of path ? path.split("/") : []) {
    acc = acc ? acc + "/" + part : part;
    crumbs.append(h("a", { href: artifactHash(meta.name, acc), text: part + "/" }));
  }
  const rows = page.entries.map((e) => [
    e.type === "directory"
      ? h("a", { href: artifactHash(meta.name, e.path), class: "dir", text: e.name + "/" })
      : h("a", { href: contentUrl(meta.id, e.path), class: "file", download: e.name, "data-path": e.path, text: e.name }),
    e.type, e.size === null ? "" : bytes(e.size), h("code", { title: e.id, text: short(e.id) }),
  ]);
  box.append(crumbs, rows.length ? table(["name", "type", "size", "id"], rows, { id: "files" })
                                 : h("p", { class: "empty", text: "empty folder" }));
}

// -- routing ------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").slice(1);
  let job;
  if (parts[0] === "a" && parts[1]) {
    const ref = decodeURIComponent(parts[1]);
    const path = parts.slice(2).map(decodeURIComponent).join("/");
    job = viewArtifact(ref, path);
  } else if (parts[0] === "s") {
    job = viewSearch(decodeURIComponent(parts.slice(1).join("/")));
  } else {
    job = viewRecent();
  }
  job.catch(fail);
}

document.getElementById("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = "#/s/" + encodeURIComponent(searchInput.value.trim());
});
window.addEventListener("hashchange", route);

fetch("/api/v1/").then((r) => r.json()).then((info) => {
  if (info && info.store) document.getElementById("store-url").textContent = info.store;
}).catch(() => {});
loadLevel(treeRoot, "").catch(fail);
route();
