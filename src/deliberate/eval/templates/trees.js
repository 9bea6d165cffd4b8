
(function () {
  "use strict";
  var trees = JSON.parse(document.getElementById("tree-data").textContent);
  if (!trees.length) return;
  document.getElementById("tree-empty").hidden = true;
  document.getElementById("tree-ui").hidden = false;
  var select = document.getElementById("tree-select");
  var filter = document.getElementById("tree-filter");
  var view = document.getElementById("tree-view");
  var metaBox = document.getElementById("tree-meta");
  var current = null;  // {tree, kids: id -> [node], byId}

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML: data is untrusted
    return e;
  }
  function num(v) {
    if (v === null || v === undefined) return null;
    return Number.isInteger(v) ? String(v) : Number(v).toFixed(3);
  }
  function label(t, i) {
    var parts = [t.problem_id, t.strategy + (t.n !== null ? " n=" + t.n : "")];
    if (t.seed !== null) parts.push("seed " + t.seed);
    parts.push(t.n_nodes + " nodes");
    var mark = t.outcome === true ? "  ✓" : t.outcome === false ? "  ✗" : "";
    return (i + 1) + ". " + parts.join(" · ") + mark;
  }
  function fillSelect() {
    var q = filter.value.trim().toLowerCase();
    var keep = select.value;
    select.textContent = "";
    trees.forEach(function (t, i) {
      if (q && (t.problem_id + " " + t.strategy + " " + t.question).toLowerCase().indexOf(q) < 0) return;
      var o = el("option", null, label(t, i));
      o.value = String(i);
      select.appendChild(o);
    });
    if (select.querySelector('option[value="' + keep + '"]')) select.value = keep;
    if (select.value !== "" && (!current || String(current.index) !== select.value)) show(Number(select.value));
  }
  function metaRow(k, v, cls) {
    metaBox.appendChild(el("div", "k", k));
    var d = el("div", "v" + (cls ? " " + cls : ""));
    if (v instanceof Node) d.appendChild(v); else d.textContent = v;
    metaBox.appendChild(d);
  }
  function outcomeNode(o) {
    if (o === true) return el("span", "mark ok", "✓ correct");
    if (o === false) return el("span", "mark bad", "✗ wrong");
    return el("span", null, "no verdict recorded");
  }
  function renderNode(node, depth) {
    var kids = current.kids[node.id] || [];
    var li = el("li", "node" + (node.chosen ? " chosen" : "") + (depth === 0 ? " root" : "") +
      (node.terminal ? " terminal" : ""));
    li.setAttribute("role", "treeitem");
    li.dataset.nodeId = String(node.id);
    li.dataset.depth = String(depth);
    var row = el("div", "row");
    if (kids.length) {
      var btn = el("button", "toggle", "▶");
      btn.type = "button";
      btn.title = "show / hide the " + kids.length + " child step" + (kids.length > 1 ? "s" : "");
      btn.setAttribute("aria-expanded", "false");
      btn.addEventListener("click", function () { setOpen(li, li.getAttribute("aria-expanded") !== "true"); });
      row.appendChild(btn);
    } else {
      row.appendChild(el("span", "toggle-spacer"));
    }
    var text = node.text || (depth === 0 ? current.tree.question : "");
    row.appendChild(el("div", "step", text || "(empty)"));
    var badges = el("div", "badges");
    if (node.chosen) badges.appendChild(el("span", "tag", "chosen"));
    if (num(node.score) !== null) badges.appendChild(el("span", "tag", "score " + num(node.score)));
    if (num(node.visits) !== null) badges.appendChild(el("span", "tag", "visits " + num(node.visits)));
    if (num(node.value) !== null) badges.appendChild(el("span", "tag", "value " + num(node.value)));
    if (node.terminal) badges.appendChild(el("span", "tag term", "terminal"));
    if (node.correct === true) badges.appendChild(el("span", "mark ok", "✓"));
    if (node.correct === false) badges.appendChild(el("span", "mark bad", "✗"));
    if (kids.length) badges.appendChild(el("span", "tag kids", kids.length + (kids.length > 1 ? " children" : " child")));
    row.appendChild(badges);
    li.appendChild(row);
    li.setAttribute("aria-expanded", "false");
    return li;
  }
  // Children are built on first expand, so a 5000-node MCTS tree costs nothing until it is opened.
  function setOpen(li, open) {
    var ul = li.querySelector(":scope > ul.children");
    var id = Number(li.dataset.nodeId);
    var kids = current.kids[id] || [];
    if (!kids.length) return;
    if (!ul && open) {
      ul = el("ul", "children");
      ul.setAttribute("role", "group");
      var d = Number(li.dataset.depth) + 1;
      kids.forEach(function (k) { ul.appendChild(renderNode(k, d)); });
      li.appendChild(ul);
    }
    if (ul) ul.hidden = !open;
    li.setAttribute("aria-expanded", open ? "true" : "false");
    var btn = li.querySelector(":scope > .row > .toggle");
    if (btn) { btn.textContent = open ? "▼" : "▶"; btn.setAttribute("aria-expanded", open ? "true" : "false"); }
  }
  function walk(li, fn) {
    fn(li);
    var ul = li.querySelector(":scope > ul.children");
    if (ul) Array.prototype.forEach.call(ul.children, function (c) { walk(c, fn); });
  }
  function show(i) {
    var t = trees[i];
    var byId = {}, kids = {};
    t.nodes.forEach(function (n) { byId[n.id] = n; });
    t.nodes.forEach(function (n) {
      if (n.parent !== null && byId[n.parent]) (kids[n.parent] = kids[n.parent] || []).push(n);
    });
    current = {index: i, tree: t, byId: byId, kids: kids};
    metaBox.textContent = "";
    metaRow("problem", t.problem_id);
    metaRow("question", t.question || "—");
    metaRow("gold", t.gold || "—");
    metaRow("search", t.strategy + (t.n !== null ? ", n = " + t.n : "") + (t.seed !== null ? ", seed " + t.seed : "") +
      " · " + t.n_nodes + " nodes" + (t.n_nodes > t.nodes.length ? " (" + t.nodes.length + " shown)" : ""));
    metaRow("outcome", outcomeNode(t.outcome));
    view.textContent = "";
    t.nodes.forEach(function (n) {
      if (n.parent === null) {
        var li = renderNode(n, 0);
        view.appendChild(li);
        setOpen(li, true);  // the root is open: depth-1 steps visible, everything deeper collapsed
      }
    });
  }
  select.addEventListener("change", function () { show(Number(select.value)); });
  filter.addEventListener("input", fillSelect);
  document.getElementById("expand-all").addEventListener("click", function () {
    Array.prototype.forEach.call(view.children, function (r) { walk(r, function (li) { setOpen(li, true); }); });
  });
  document.getElementById("collapse-all").addEventListener("click", function () {
    Array.prototype.forEach.call(view.children, function (r) {
      walk(r, function (li) { setOpen(li, li === r); });
    });
  });
  document.getElementById("expand-chosen").addEventListener("click", function () {
    Array.prototype.forEach.call(view.children, function (r) {
      walk(r, function (li) {
        if (current.byId[Number(li.dataset.nodeId)].chosen) setOpen(li, true);
      });
    });
  });
  fillSelect();
})();
