// Draw the figures one after another from their JSON blocks, top of the page first, yielding to
// the browser in between so the header and findings show at once. window.__trainscopeReady is
// set when all are drawn (the browser test and the benchmark wait for it).
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"],
                 toImageButtonOptions: { format: "png", scale: 2 } };
  var blocks = Array.prototype.slice.call(document.querySelectorAll("script.ts-figure-data"));
  var timings = {};
  window.__trainscopeTimings = timings;
  function draw(i) {
    if (i >= blocks.length) {
      window.__trainscopeLoadMs = performance.now();
      window.__trainscopeReady = true;
      return;
    }
    var block = blocks[i], id = block.getAttribute("data-target"), t = performance.now();
    var next = function () {
      timings[id] = performance.now() - t;
      if (i === 0) { window.__trainscopeFirstMs = performance.now(); }
      setTimeout(function () { draw(i + 1); }, 0);
    };
    try {
      var spec = JSON.parse(block.textContent);
      Plotly.newPlot(document.getElementById(id), spec.data, spec.layout, config).then(next, function (err) {
        console.error("trainscope: figure " + id + " failed: " + err);
        window.__trainscopeReady = "error: " + id;
      });
    } catch (err) {
      console.error("trainscope: figure " + id + " failed: " + err);
      window.__trainscopeReady = "error: " + id;
    }
  }
  draw(0);
})();
