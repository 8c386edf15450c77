/* ShelfCast kiosk page. Renders the screen's current set, follows live updates over
   SSE with its own reconnect (backoff 1 s .. 30 s, and a watchdog: no message or
   ping for 45 s means the link is dead), switches to an attract loop when nobody has
   been in front of the screen for a while, and is never blank: it starts from the
   set embedded in the page, then the last set it saw (localStorage), then a
   welcome card. The layout follows the panel's shape (landscape, portrait, or a wide
   shelf-edge strip: one product in a row), and product names shrink to fit their box
   (down to a floor) before they are cut. */
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("boot").textContent);
  var app = document.getElementById("app");
  var $ = function (id) { return document.getElementById(id); };
  var state = { data: null, idleSince: null, attractIdx: 0, attractTimer: null, es: null,
                backoff: 1000, lastMsg: Date.now(), connects: 0, messages: 0 };
  window.__shelfcast = state;
  var KEY = "shelfcast:" + boot.screen;

  app.classList.add("kind-" + boot.kind);  // full | strip | shelf_display
  // the panel's shape: ?orientation= wins, else the viewport; a panel 2.4x wider than tall is a shelf-edge
  // strip whatever its configured kind (a full screen's five rows would be unreadable there)
  function shape() {
    var w = window.innerWidth || 1, h = window.innerHeight || 1;
    var o = boot.orientation === "landscape" || boot.orientation === "portrait" ? boot.orientation
      : (h > w ? "portrait" : "landscape");
    app.classList.toggle("portrait", o === "portrait");
    app.classList.toggle("landscape", o === "landscape");
    app.classList.toggle("strip", boot.kind === "strip" || w / h >= 2.4);
  }
  shape();

  var SVG = {
    fruit: '<circle cx="32" cy="38" r="20" fill="#fff"/><path d="M32 18c0-6 4-10 10-11-1 6-4 10-10 11z" fill="#fff"/>',
    vegetable: '<path d="M20 26l24-6-22 36z" fill="#fff"/><path d="M42 20l8-12M44 22l12-4M40 18l2-12" stroke="#fff" stroke-width="4" stroke-linecap="round"/>',
    dairy: '<path d="M24 8h16v8l6 10v30H18V26l6-10z" fill="#fff"/><rect x="22" y="32" width="20" height="12" rx="2" fill="#4a8fd8"/>',
    cheese: '<path d="M8 44l40-24 8 6v22H8z" fill="#fff"/><circle cx="22" cy="40" r="3.5" fill="#e8b730"/><circle cx="38" cy="36" r="4" fill="#e8b730"/><circle cx="46" cy="44" r="2.5" fill="#e8b730"/>',
    egg: '<ellipse cx="32" cy="36" rx="16" ry="21" fill="#fff"/>',
    bread: '<path d="M10 30c0-10 10-16 22-16s22 6 22 16c0 4-3 6-5 6v16H15V36c-2 0-5-2-5-6z" fill="#fff"/>',
    sweet: '<path d="M16 32h32l-5 22H21z" fill="#fff"/><path d="M14 32c0-10 8-18 18-18s18 8 18 18z" fill="#fff" opacity=".8"/><circle cx="32" cy="11" r="4" fill="#fff"/>',
    drink: '<path d="M18 18h28l-4 40H22z" fill="#fff"/><path d="M36 18l6-12h6" stroke="#fff" stroke-width="4" fill="none" stroke-linecap="round"/>',
    snack: '<path d="M16 10h32l-4 8 4 36H16l4-36z" fill="#fff"/><circle cx="32" cy="34" r="7" fill="#e07a2e"/>',
    basket: '<path d="M8 26h48l-6 28H14z" fill="#fff"/><path d="M20 26l8-14M44 26l-8-14" stroke="#fff" stroke-width="4" stroke-linecap="round"/>'
  };
  function tile(icon, cls) {
    var ic = SVG[icon] ? icon : "basket";
    return '<div class="tile ic-' + ic + ' ' + (cls || "") + '"><svg viewBox="0 0 64 64" aria-hidden="true">' + SVG[ic] + "</svg></div>";
  }
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function price(p) { return p == null ? "" : "$" + Number(p).toFixed(2); }
  function title(s) {  // catalogue names are often SHOUTING; soften them for reading at a distance
    s = String(s || "");
    return s === s.toUpperCase() ? s.toLowerCase().replace(/\b\w/g, function (c) { return c.toUpperCase(); }) : s;
  }
  function zoneName(z) { return z ? z.charAt(0).toUpperCase() + z.slice(1) : "the store"; }

  // shrink a name until it is not cut (line clamp) and its box does not overflow, down to `floor` of its CSS size
  // (a clamped line is a whole line hidden; a few pixels are just glyphs reaching past a tight line height)
  function over(e, px) { return e.scrollHeight > e.clientHeight + px || e.scrollWidth > e.clientWidth + px; }
  function fit(el, box, floor) {
    if (!el) return;
    el.style.fontSize = "";
    var size = parseFloat(getComputedStyle(el).fontSize), min = size * floor;
    while ((over(el, size / 3) || (box && over(box, size / 3))) && size * 0.92 >= min) {
      size *= 0.92;
      el.style.fontSize = size + "px";
    }
  }
  function fitAll() {
    if (app.dataset.mode === "attract") { fit(document.querySelector("#attract .name"), $("attract"), 0.5); return; }
    fit(document.querySelector("#hero .name"), $("hero"), 0.55);
    var rows = document.querySelectorAll("#more .name");
    for (var i = 0; i < rows.length; i++) fit(rows[i], null, 0.75);
  }
  function shown(items) {  // a product the node has no catalogue entry for (bare sku, no price) is not worth a glance
    var known = items.filter(function (i) { return !(i.name === i.sku && i.price == null); });
    return known.length ? known : items;
  }

  var WELCOME = { screen: boot.screen, session: null, model_version: "fallback", zone: boot.zone, seq: 0,
    items: [{ sku: "", name: "Welcome to " + (boot.store || "our store"), price: null,
              reason: "Fresh picks every day", icon: "basket" }] };

  function render(d) {
    if (!d || !d.items || !d.items.length) d = state.data && state.data.items.length ? state.data : WELCOME;
    var changed = !state.data || state.data.seq !== d.seq;
    state.data = d;
    app.dataset.seq = d.seq;
    app.dataset.session = d.session || "";
    var items = shown(d.items).slice(0, 5);
    var h = items[0];
    if (app.dataset.mode !== "attract") {
      $("headline").innerHTML = d.session ? "Picked <em>for you</em>" : "Popular in <em>" + esc(zoneName(d.zone)) + "</em> right now";
    }
    $("hero").innerHTML = '<div class="top">' + tile(h.icon) + '<div class="price">' + price(h.price) + "</div></div>" +
      '<div class="name" data-sku="' + esc(h.sku) + '">' + esc(title(h.name)) + "</div>" +
      '<div class="reason">' + esc(h.reason) + "</div>";
    $("hero").dataset.sku = h.sku;
    var rows = "";
    for (var i = 1; i < items.length; i++) {
      var it = items[i];
      rows += '<li class="row card item" data-sku="' + esc(it.sku) + '">' + tile(it.icon) +
        '<div class="txt"><div class="name">' + esc(title(it.name)) + '</div><div class="reason">' + esc(it.reason) +
        '</div></div><div class="price">' + price(it.price) + "</div></li>";
    }
    $("more").innerHTML = rows;
    app.classList.toggle("single", items.length === 1);
    fitAll();
    if (changed) { $("hero").classList.remove("fresh"); void $("hero").offsetWidth; $("hero").classList.add("fresh"); }
    $("foot").innerHTML = "<span>" + esc(boot.screen) + " · " + esc(zoneName(d.zone)) + "</span><span>" +
      (d.model_version === "fallback" ? "popular picks" : "model " + esc(d.model_version)) + "</span>";
    try { localStorage.setItem(KEY, JSON.stringify(d)); } catch (e) { /* private mode */ }
    if (d.session) { state.idleSince = null; stopAttract(); }
    else if (state.idleSince === null) state.idleSince = Date.now();
    if (app.dataset.mode === "boot") app.dataset.mode = "live";
  }

  // -- the attract loop -------------------------------------------------------------------
  function attractStep() {
    var items = shown((state.data || WELCOME).items);
    var it = items[state.attractIdx % items.length];
    state.attractIdx++;
    $("attract").innerHTML = tile(it.icon) + '<div><div class="name">' + esc(title(it.name)) + '</div><div class="price">' +
      price(it.price) + '</div><div class="reason">' + esc(it.reason || "") + "</div></div>";
    $("attract").dataset.sku = it.sku;
    fitAll();
  }
  function startAttract() {
    if (app.dataset.mode === "attract") return;
    app.dataset.mode = "attract";
    state.attractIdx = 0;
    $("headline").innerHTML = "Today in <em>" + esc(zoneName((state.data || {}).zone || boot.zone)) + "</em>";
    attractStep();
    state.attractTimer = setInterval(attractStep, 6000);
  }
  function stopAttract() {
    if (app.dataset.mode !== "attract") return;
    clearInterval(state.attractTimer);
    app.dataset.mode = "live";
    render(state.data);
  }
  setInterval(function () {
    if (state.idleSince !== null && Date.now() - state.idleSince > boot.attract_after_s * 1000) startAttract();
  }, 1000);

  // -- live updates -----------------------------------------------------------------------
  function setLive(ok) {
    if (!ok) state.wasDown = true;
    $("dot").className = ok ? "dot" : "dot off"; app.dataset.link = ok ? "live" : "down";
  }
  function connect() {
    if (state.es) state.es.close();
    state.connects++;
    var es = new EventSource("/api/screens/" + encodeURIComponent(boot.screen) + "/stream");
    state.es = es;
    es.onopen = function () {
      setLive(true); state.backoff = 1000; state.lastMsg = Date.now();
      if (state.wasDown) { state.wasDown = false; checkForUpdate(); }
    };
    es.addEventListener("recommendations", function (e) {
      state.lastMsg = Date.now(); state.messages++;
      try { render(JSON.parse(e.data)); } catch (err) { /* a bad frame must not blank the screen */ }
    });
    es.addEventListener("ping", function () { state.lastMsg = Date.now(); });
    es.onerror = function () {
      setLive(false);
      if (es.readyState === EventSource.CLOSED) {  // the browser gave up: we do not
        setTimeout(connect, state.backoff);
        state.backoff = Math.min(state.backoff * 2, 30000);
      }
    };
  }
  setInterval(function () {  // watchdog: a half-open link looks "open" forever
    if (Date.now() - state.lastMsg > 45000) { state.lastMsg = Date.now(); setLive(false); connect(); }
  }, 5000);

  // -- the node is back after a restart: new page code (an upgrade) or a changed screen (kind, zone,
  // orientation ... in the config) loads itself; the same code and screen keep running without a flash.
  // The page itself is never cached (no-store); the files are revalidated here, so the reload gets the new ones.
  var ASSETS = ["/static/screen.js", "/static/screen.css"];
  var BOOT = /<script id="boot" type="application\/json">([\s\S]*?)<\/script>/;
  function pageKey() {  // the page's markup and its screen settings, without the set it embeds
    return fetch(location.href, { cache: "no-store" }).then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (t) {
        var m = BOOT.exec(t), b = {}, k;
        if (!m) return "";
        try { b = JSON.parse(m[1]); } catch (e) { return ""; }
        delete b.initial;
        var keys = Object.keys(b).sort(), out = [];
        for (k = 0; k < keys.length; k++) out.push(keys[k] + "=" + JSON.stringify(b[keys[k]]));
        return t.replace(m[0], "") + out.join("&");
      }, function () { return ""; });
  }
  function versions(mode) {
    return Promise.all(ASSETS.map(function (u) {
      return fetch(u, { cache: mode }).then(function (r) {
        return r.ok ? (r.headers.get("ETag") || r.headers.get("Last-Modified") || "") : "";
      }, function () { return ""; });
    }).concat([pageKey()]));
  }
  versions("force-cache").then(function (v) { state.version = v; });
  function checkForUpdate() {
    versions("no-cache").then(function (v) {
      var old = state.version;
      if (!old) { state.version = v; return; }
      for (var i = 0; i < v.length; i++) {
        if (v[i] && old[i] && v[i] !== old[i]) { state.reloads = (state.reloads || 0) + 1; location.reload(); return; }
      }
    });
  }

  function tick() {
    var d = new Date();
    $("clock").textContent = ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }
  setInterval(tick, 10000); tick();
  window.addEventListener("resize", function () { shape(); fitAll(); });

  var cached = null;
  try { cached = JSON.parse(localStorage.getItem(KEY) || "null"); } catch (e) { cached = null; }
  render(boot.initial && boot.initial.items && boot.initial.items.length ? boot.initial : cached);
  connect();
})();
