// Draw the figures from their JSON blocks, lazily: the figures on (or near) the first screen draw
// at once, one after another; every other figure draws when it is scrolled near the viewport
// (IntersectionObserver), so opening a report with many big figures costs only what is seen.
// Each figure's container has its final height before it is drawn, so nothing jumps.
//
// Set for the browser test and the benchmark:
//   window.__trainscopeReady    true once the first screen is drawn ("error: <id>" if a figure failed)
//   window.__trainscopeFirstMs  when the first screen was drawn (ms from navigation start)
//   window.__trainscopeAllMs    when the last figure was drawn (also __trainscopeLoadMs)
//   window.__trainscopeFigures / __trainscopeDrawn   how many figures there are / are drawn
//   window.__trainscopeDrawAll()  queue every figure now (printing calls it too)
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"],
                 toImageButtonOptions: { format: "png", scale: 2 } };
  var blocks = Array.prototype.slice.call(document.querySelectorAll("script.ts-figure-data"));
  var timings = {};
  var state = blocks.map(function () { return 0; });  // 0 waiting, 1 queued, 2 drawn
  var queue = [], busy = false, drawn = 0, firstScreen = null;
  window.__trainscopeTimings = timings;
  window.__trainscopeFigures = blocks.length;
  window.__trainscopeDrawn = 0;

  function target(i) { return document.getElementById(blocks[i].getAttribute("data-target")); }

  function fail(i, err) {
    console.error("trainscope: figure " + blocks[i].getAttribute("data-target") + " failed: " + err);
    window.__trainscopeReady = "error: " + blocks[i].getAttribute("data-target");
    busy = false;
  }

  function checkFirstScreen() {
    if (firstScreen === null || window.__trainscopeReady !== undefined) { return; }
    for (var k = 0; k < firstScreen.length; k++) { if (state[firstScreen[k]] !== 2) { return; } }
    window.__trainscopeFirstMs = performance.now();
    window.__trainscopeReady = true;
  }

  function pump() {
    if (busy || !queue.length) { return; }
    var i = queue.shift(), el = target(i), id = el.id, t = performance.now();
    busy = true;
    try {
      var spec = JSON.parse(blocks[i].textContent);
      Plotly.newPlot(el, spec.data, spec.layout, config).then(function () {
        timings[id] = performance.now() - t;
        state[i] = 2;
        window.__trainscopeDrawn = ++drawn;
        if (drawn === blocks.length) { window.__trainscopeAllMs = window.__trainscopeLoadMs = performance.now(); }
        checkFirstScreen();
        busy = false;
        setTimeout(pump, 0);  // let the browser paint between figures
      }, function (err) { fail(i, err); });
    } catch (err) {
      fail(i, err);
    }
  }

  function want(i) {
    if (state[i] !== 0) { return; }
    state[i] = 1;
    queue.push(i);
    pump();
  }

  function drawAll() { for (var i = 0; i < blocks.length; i++) { want(i); } }
  window.__trainscopeDrawAll = drawAll;
  window.addEventListener("beforeprint", drawAll);

  if (!blocks.length) {
    firstScreen = [];
    checkFirstScreen();
    window.__trainscopeAllMs = window.__trainscopeLoadMs = performance.now();
    return;
  }
  if (!("IntersectionObserver" in window)) {  // very old browser: draw everything, top first
    firstScreen = blocks.map(function (_, i) { return i; });
    drawAll();
    return;
  }
  var index = new Map(blocks.map(function (_, i) { return [target(i), i]; }));
  // half a screen of look-ahead: a figure starts drawing just before it scrolls into view
  var observer = new IntersectionObserver(function (entries) {
    var seen = [];
    entries.forEach(function (e) { if (e.isIntersecting) { seen.push(index.get(e.target)); } });
    seen.sort(function (a, b) { return a - b; });  // top first
    if (firstScreen === null) { firstScreen = seen; }
    seen.forEach(function (i) { observer.unobserve(target(i)); want(i); });
    checkFirstScreen();
  }, { rootMargin: "50% 0px 50% 0px" });
  index.forEach(function (_, el) { observer.observe(el); });
})();
