"""Open a report in headless Chromium and check it, without any browser-automation package.

Talks the DevTools protocol over `--remote-debugging-pipe` (fd 3: commands in, fd 4: events out,
messages separated by NUL bytes), so it needs nothing but a `chromium` binary — Debian's package
works. Used by the browser tests, the size benchmark and the docs screenshots.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    env = os.environ.get("TRAINSCOPE_CHROMIUM")
    for cand in ((env,) if env else ()) + CANDIDATES:
        if cand and os.path.exists(cand):
            return cand
    return shutil.which("chromium")


@dataclass
class PageCheck:
    """What the browser saw while opening a report."""

    console_errors: list[str] = field(default_factory=list)
    network_requests: list[str] = field(default_factory=list)  # anything but file:/data:/blob:
    dialogs: list[str] = field(default_factory=list)  # alert()/confirm() that fired: an XSS sign
    figures: int = 0  # figure containers in the page
    rendered: int = 0  # of those, drawn by plotly (.js-plotly-plot with a .main-svg)
    ready: Any = None  # window.__trainscopeReady: true, or "error: ..."
    load_ms: float = 0.0  # navigation start -> every figure drawn (scrolled into view one by one)
    first_ms: float = 0.0  # navigation start -> the figures of the first screen drawn
    timings: dict[str, float] = field(default_factory=dict)  # ms each figure took to draw, by element id
    page: dict[str, Any] = field(default_factory=dict)  # result of the `probe_js` expression
    # renderer main-thread busy seconds (Performance.getMetrics: TaskDuration, ScriptDuration, ...):
    # less sensitive than wall time to other processes on a shared machine
    metrics: dict[str, float] = field(default_factory=dict)
    screenshot: Path | None = None


class BrowserError(RuntimeError):
    pass


class _Pipe:
    def __init__(self, binary: str, user_data_dir: str, width: int, height: int) -> None:
        # Chromium reads commands from fd 3 and writes replies/events to fd 4.
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def child_fds() -> None:
            # copy first so neither dup2 clobbers the other end when it already sits on 3 or 4
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # close_fds would run after preexec_fn and close 3/4 again; our other fds are
            # non-inheritable (PEP 446), so exec drops them anyway
            close_fds=False,
            preexec_fn=child_fds,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for a while (console messages arrive asynchronously)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._event(self._read(deadline))
        except TimeoutError:
            pass

    def _event(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        if ev.get("method") == "Page.javascriptDialogOpening":
            # an open alert() blocks the page; dismiss it without waiting (it is recorded)
            self._next_id += 1
            msg = {"id": self._next_id, "method": "Page.handleJavaScriptDialog",
                   "params": {"accept": False}, "sessionId": ev.get("sessionId")}
            os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._out_r], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError("chromium exited: " + self._stderr_tail())
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _stderr_tail(self) -> str:
        try:
            self.proc.kill()
            return (self.proc.stderr.read() or b"").decode(errors="replace")[-2000:]  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - best effort diagnostics only
            return ""

    def close(self) -> None:
        try:
            os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stderr:
            self.proc.stderr.close()


READY_JS = "window.__trainscopeReady === undefined ? null : window.__trainscopeReady"
COUNT_JS = """JSON.stringify({
  figures: document.querySelectorAll('.ts-figure').length,
  rendered: Array.from(document.querySelectorAll('.ts-figure')).filter(
      d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg')).length,
  load_ms: window.__trainscopeAllMs || window.__trainscopeLoadMs || 0,
  first_ms: window.__trainscopeFirstMs || 0,
  timings: window.__trainscopeTimings || {}
})"""
DRAWN_ALL_JS = ("window.__trainscopeFigures === undefined || window.__trainscopeDrawn >= window.__trainscopeFigures"
                " || typeof window.__trainscopeReady === 'string'")
# The report draws figures lazily, when they come near the viewport: scroll to the first one not
# drawn yet (a real scroll, so the page's own IntersectionObserver path is what draws it).
SCROLL_NEXT_JS = """(() => {
  if (window.__trainscopeFigures === undefined) return -1;
  if (window.__trainscopeDrawn >= window.__trainscopeFigures) return 0;
  const next = document.querySelector('.ts-figure:not(.js-plotly-plot)');
  if (next) next.scrollIntoView({block: 'center'});
  return window.__trainscopeFigures - window.__trainscopeDrawn;
})()"""


class Browser:
    """One headless Chromium for several pages (starting one costs a second or more).

        with Browser() as b:
            for path in reports:
                check = b.open(path, "shot.png")
    """

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900) -> None:
        binary = binary or find_chromium()
        if not binary:
            raise BrowserError("no chromium binary found (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="trainscope-chromium-")
        self._pipe = _Pipe(binary, self._profile.name, width, height)
        self.width, self.height = width, height

    def open(self, html_path: str | Path, screenshot: str | Path | None = None, *, full_page: bool = True,
             height: int | None = None, probe_js: str | None = None, clip_selector: str | None = None,
             timeout: float = 60.0, draw_all: bool | str = True) -> PageCheck:
        """Load a report in a fresh tab, wait for the first screen, then (`draw_all`) scroll to each
        figure in turn until every one is drawn ("now": ask the page to draw them all at once);
        collect errors, screenshot (from the top)."""
        url = Path(html_path).resolve().as_uri()
        return _check(self._pipe, url, screenshot, self.width, height or self.height, full_page, probe_js,
                      timeout, clip_selector, draw_all)

    def close(self) -> None:
        self._pipe.close()
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_report(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    *,
    width: int = 1280,
    height: int = 900,
    full_page: bool = True,
    probe_js: str | None = None,
    clip_selector: str | None = None,
    timeout: float = 60.0,
    binary: str | None = None,
    draw_all: bool | str = True,
) -> PageCheck:
    """Load `html_path` headless, wait until every figure is drawn, collect errors, screenshot.

    The screenshot is the whole page (`full_page`), the first `height` pixels, or the element
    matching `clip_selector` (e.g. "#fig-grad" for one section).
    """
    with Browser(binary, width, height) as browser:
        return browser.open(html_path, screenshot, full_page=full_page, probe_js=probe_js,
                            clip_selector=clip_selector, timeout=timeout, draw_all=draw_all)


def _check(pipe: _Pipe, url: str, screenshot: str | Path | None, width: int, height: int,
           full_page: bool, probe_js: str | None, timeout: float, clip_selector: str | None = None,
           draw_all: bool | str = True) -> PageCheck:
    # a fresh tab per report, so nothing (events, scroll, zoom) carries over between reports
    page_id = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    try:
        return _check_tab(pipe, page_id, url, screenshot, width, height, full_page, probe_js, timeout,
                          clip_selector, draw_all)
    finally:
        pipe.send("Target.closeTarget", {"targetId": page_id})


def _check_tab(pipe: _Pipe, page_id: str, url: str, screenshot: str | Path | None, width: int, height: int,
               full_page: bool, probe_js: str | None, timeout: float, clip_selector: str | None,
               draw_all: bool | str = True) -> PageCheck:
    sid = pipe.send("Target.attachToTarget", {"targetId": page_id, "flatten": True})["sessionId"]
    pipe.events = []
    for domain in ("Page", "Runtime", "Log", "Network", "Performance"):
        pipe.send(f"{domain}.enable", session=sid)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=sid)
    t0 = time.monotonic()
    pipe.send("Page.navigate", {"url": url}, session=sid)
    result = PageCheck()
    deadline = t0 + timeout
    while True:
        ready = _eval(pipe, sid, READY_JS)
        if ready is not None:
            break
        if time.monotonic() > deadline:
            ready = "timeout: window.__trainscopeReady never set"
            break
        pipe.pump(0.05)
    if draw_all == "now" and ready is True:  # every figure back to back, without waiting for scrolls
        _eval(pipe, sid, "window.__trainscopeDrawAll && window.__trainscopeDrawAll()")
        while time.monotonic() < deadline and _eval(pipe, sid, DRAWN_ALL_JS) is False:
            pipe.pump(0.02)
    elif draw_all and ready is True:
        while time.monotonic() < deadline:
            if _eval(pipe, sid, SCROLL_NEXT_JS) <= 0:
                break
            pipe.pump(0.02)
        _eval(pipe, sid, "window.scrollTo(0, 0)")
    result.load_ms = (time.monotonic() - t0) * 1000.0
    pipe.pump(0.3)  # late console messages
    result.ready = ready
    counts = json.loads(_eval(pipe, sid, COUNT_JS))
    result.figures, result.rendered = counts["figures"], counts["rendered"]
    if counts["load_ms"]:
        result.load_ms = float(counts["load_ms"])
    result.first_ms = float(counts["first_ms"] or 0.0)
    result.timings = {k: float(v) for k, v in (counts.get("timings") or {}).items()}
    if probe_js:
        result.page = json.loads(_eval(pipe, sid, f"JSON.stringify(({probe_js}))"))
    perf = pipe.send("Performance.getMetrics", session=sid).get("metrics", [])
    result.metrics = {m["name"]: float(m["value"]) for m in perf
                      if m["name"] in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration",
                                       "JSHeapUsedSize")}
    if screenshot is not None:
        result.screenshot = _screenshot(pipe, sid, Path(screenshot), width, height,
                                        full_page or clip_selector is not None, clip_selector)
    _collect([e for e in pipe.events if e.get("sessionId") in (None, sid)], result)
    return result


def _eval(pipe: _Pipe, sid: str, expr: str) -> Any:
    res = pipe.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=sid)
    if "exceptionDetails" in res:
        raise BrowserError(f"evaluate failed: {res['exceptionDetails'].get('text')}")
    return res.get("result", {}).get("value")


def _screenshot(pipe: _Pipe, sid: str, path: Path, width: int, height: int, full_page: bool,
                clip_selector: str | None = None) -> Path:
    if full_page:
        metrics = pipe.send("Page.getLayoutMetrics", session=sid)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        h = int(min(max(size["height"], height), 16000))
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": h, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        pipe.pump(0.5)  # let plotly's responsive relayout settle
    params: dict[str, Any] = {"format": "png"}
    if clip_selector:
        box = _eval(pipe, sid, "(() => { const e = document.querySelector(%s); if (!e) return null;"
                    " const r = e.getBoundingClientRect(); return JSON.stringify({x: r.left + scrollX,"
                    " y: r.top + scrollY, width: r.width, height: r.height}); })()" % json.dumps(clip_selector))
        if box is None:
            raise BrowserError(f"no element matches {clip_selector!r}")
        params["clip"] = dict(json.loads(box), scale=1)
        params["captureBeyondViewport"] = True
    shot = pipe.send("Page.captureScreenshot", params, session=sid, timeout=60)
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _collect(events: list[dict[str, Any]], result: PageCheck) -> None:
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            result.console_errors.append(f"console.{p['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            desc = d.get("exception", {}).get("description") or d.get("text", "")
            result.console_errors.append(f"exception: {desc}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            result.console_errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            if not u.startswith(("file:", "data:", "blob:", "about:")):
                result.network_requests.append(u)
        elif method == "Page.javascriptDialogOpening":
            result.dialogs.append(p.get("message", ""))


def main(argv: list[str] | None = None) -> int:
    """python -m trainscope.report.browser REPORT.html [SHOT.png] [--select CSS] [--height PX]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m trainscope.report.browser", description=main.__doc__)
    ap.add_argument("report")
    ap.add_argument("screenshot", nargs="?")
    ap.add_argument("--select", help="screenshot only this element, e.g. '#fig-grad'")
    ap.add_argument("--height", type=int, default=0, help="screenshot only the top PX pixels")
    args = ap.parse_args(argv)
    res = open_report(args.report, args.screenshot, height=args.height or 900, full_page=not args.height,
                      clip_selector=args.select)
    print(f"figures drawn: {res.rendered}/{res.figures}; first screen after {res.first_ms / 1000:.2f} s, "
          f"all after {res.load_ms / 1000:.2f} s")
    for what, items in (("console error", res.console_errors), ("network request", res.network_requests),
                        ("dialog", res.dialogs)):
        for item in items:
            print(f"{what}: {item}")
    ok = res.ready is True and res.rendered == res.figures and not (res.console_errors or res.network_requests
                                                                     or res.dialogs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
