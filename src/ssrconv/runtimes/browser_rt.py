"""Browser engines: SSR-Net in a real headless Chromium, driven by Playwright for Python.

``chromium-ort-wasm`` runs an ``.onnx`` file or a ``.web`` folder in onnxruntime-web
(WebAssembly, the same files ``--to web`` vendors). The folder is served from 127.0.0.1 by a
small threaded server on a random port, with the cross-origin isolation headers (COOP/COEP)
that give ``performance.now()`` 5 us resolution (100 us without) and allow wasm threads.
Batches cross into the page as base64 float32; ages and P(male) come back as numbers.

Chromium is the system's (Debian's ``chromium``, ``$SSRCONV_CHROMIUM`` to override), never a
browser download: ``make browser`` installs it with the npm packages and Playwright.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import tempfile
import threading
import weakref
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from ssrconv.atomic import remove_path, track
from ssrconv.errors import ModelFileError, SsrconvError
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# As the machine probe ran it (root: --no-sandbox); the background-networking flags stop
# Chromium's calls home, which this closed network refuses many at a time.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--disable-default-apps")
HARNESS = "/__ssrconv_harness.html"
CHUNK = 64  # faces per page call: bounds the base64 string (~260 KB per 4 faces)
TIMEOUT_MS = 120_000


def chromium_path() -> Path:
    """The Chromium executable the browser engines launch; BrowserSetupError when missing."""
    from ssrconv.formats.web import BrowserSetupError

    path = Path(os.environ.get("SSRCONV_CHROMIUM") or DEFAULT_CHROMIUM)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BrowserSetupError(f"no Chromium at {path}; run `make browser` (Debian's chromium) "
                                "or set SSRCONV_CHROMIUM to a Chromium executable")
    return path


class _Handler(SimpleHTTPRequestHandler):
    timeout = 30  # a stalled client cannot hold a server thread for ever

    def end_headers(self):
        if self.server.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self):
        if self.path.split("?")[0] == HARNESS:
            body = self.server.harness
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format, *args):  # quiet: the page's errors come back via Playwright
        pass


_Handler.extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                           ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


class StaticServer:
    """A static folder on http://127.0.0.1:<random port>/ with cross-origin isolation headers
    (``isolate=False``: none, as a plain static host), served from a daemon thread until
    :meth:`close`."""

    def __init__(self, root: Path, harness: str = "", isolate: bool = True):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.httpd.isolate = isolate
        # The blank page engines load their library into, at HARNESS (not a file of the folder).
        self.httpd.harness = ("<!doctype html><meta charset='utf-8'><title>ssrconv</title>"
                              + harness).encode()
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ssrconv-web",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class BrowserPage:
    """A folder served on 127.0.0.1 (:class:`StaticServer`) and one page of a headless system
    Chromium (Playwright) to open it in; :meth:`close` (or ``with``) ends all three. The page
    (``.page``) starts blank: ``page.goto(self.url + "/index.html")``."""

    def __init__(self, root: Path, executable: Path | None = None, harness: str = "",
                 extra_args: tuple[str, ...] = (), isolate: bool = True):
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            from ssrconv.formats.web import BrowserSetupError

            raise BrowserSetupError("Playwright for Python is not installed; run `make browser` "
                                    "or pip install 'ssrconv[browser]'") from None
        executable = executable or chromium_path()
        self._closers: list = []
        try:
            server = StaticServer(Path(root), harness, isolate)
            self._closers.append(server.close)
            self.url = server.url
            playwright = sync_playwright().start()
            self._closers.append(playwright.stop)
            browser = playwright.chromium.launch(executable_path=str(executable), headless=True,
                                                 args=[*CHROMIUM_ARGS, *extra_args])
            self._closers.append(browser.close)
            self.page = browser.new_page()
            self.page.set_default_timeout(TIMEOUT_MS)
            self.errors: list[str] = []
            self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # already gone (e.g. at interpreter exit): nothing left to free
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_LOAD = """async ([model, threads]) => {
  const lib = await import('./ssrconv.mjs');
  lib.configure({ numThreads: threads });
  const session = await lib.loadModel(model);
  window.__ssrconv = { lib, session };
  return { inputs: session.inputNames, outputs: session.outputNames,
           isolated: self.crossOriginIsolated, version: lib.ort.env.versions.web };
}"""

_RUN = """async ([b64, n]) => {
  const { lib, session } = window.__ssrconv;
  const bytes = Uint8Array.fromBase64(b64);
  const { heads, ms } = await lib.runSsrnet(session, new Float32Array(bytes.buffer), n);
  const out = { ms };
  for (const [k, v] of Object.entries(heads)) out[k] = Array.from(v);
  return out;
}"""

_TIME = """async ([b64, n, repeats]) => {
  const { lib, session } = window.__ssrconv;
  const data = new Float32Array(Uint8Array.fromBase64(b64).buffer);
  const times = [];
  for (let i = 0; i < repeats; i++) times.push((await lib.runSsrnet(session, data, n)).ms);
  return times;
}"""


class BrowserRuntime(Runtime):
    """``chromium-ort-wasm``: an .onnx file or a .web folder in onnxruntime-web in headless
    Chromium. ``num_threads`` sets ort-web's wasm threads (default 1)."""

    engine = "chromium-ort-wasm"
    harness = ""  # extra HTML in the blank page (LiteRT.js: an import map)
    load_js, run_js, time_js = _LOAD, _RUN, _TIME

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        self.path = Path(path)
        self.precision = precision
        # The wasm EP has no reduced-float path: an fp32 graph runs in float32. A QDQ graph's
        # kernels are not read back from the page, so its precision is left unknown.
        self.executed_precision = "fp32" if precision in (None, "fp32") else None
        self.num_threads = int(num_threads or 1)
        self.last_browser_ms: float | None = None
        # In-page ms of every run() so far: a caller that feeds this runtime in chunks (e.g.
        # StaticBatchRuntime for a fixed-batch file) reads the difference around its own call.
        self.browser_ms_total = 0.0
        self._tmp: Path | None = None
        self._page: BrowserPage | None = None
        executable = chromium_path()
        try:
            root, model = self._prepare()
            self._start(root, model, executable)
        except BaseException:
            self.close()
            raise
        atexit.register(_close_ref, weakref.ref(self))

    def _prepare(self) -> tuple[Path, str]:
        """(folder to serve, model file in it): a .web folder as is; for an .onnx, a private
        folder with the library, the vendored runtime and a copy of the model."""
        from ssrconv.formats import web

        from ssrconv.targets import format_of

        family = getattr(format_of(self.path), "family", None)
        if family == "web":
            web.verify(self.path)
            self.backend = "web"
            return self.path, web.read_config(self.path)["model"]
        if family != "onnx":
            raise ModelFileError(f"{self.path}: {self.engine} reads .onnx files and .web folders")
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        _check_onnx(self.path)
        self.backend = "onnx"
        self._tmp = track(Path(tempfile.mkdtemp(prefix="ssrconv-browser-")))
        web.build_folder(self._tmp, self.path, "model.onnx", detector=False)
        return self._tmp, "model.onnx"

    def _start(self, root: Path, model: str, executable: Path) -> None:
        from playwright.sync_api import Error as PlaywrightError

        self._page = BrowserPage(root, executable, self.harness)
        self.page = self._page.page
        try:
            self.page.goto(self._page.url + HARNESS)
            info = self.page.evaluate(self.load_js, [model, self.num_threads])
        except PlaywrightError as err:
            raise ModelFileError(f"{self.path}: {self.engine} could not load it "
                                 f"({_first_line(err)})") from None
        self.cross_origin_isolated = bool(info["isolated"])
        self.runtime_version = info["version"] or getattr(self, "runtime_version", None)
        self.heads = tuple(h for h in info["outputs"] if h in HEADS)
        if not self.heads:
            raise ModelFileError(f"{self.path}: outputs {info['outputs']} name no SSR-Net head")

    def run(self, batch) -> dict[str, np.ndarray]:
        """Run the batch in the page, CHUNK faces per call; ``last_browser_ms`` is the time
        spent inside ort-web's session.run, summed over the calls."""
        from playwright.sync_api import Error as PlaywrightError

        batch = self.check_batch(batch)
        out: dict[str, list[np.ndarray]] = {h: [] for h in self.heads}
        total_ms = 0.0
        for start in range(0, len(batch), CHUNK):
            part = batch[start:start + CHUNK]
            try:
                got = self.page.evaluate(self.run_js,
                                         [base64.b64encode(part.tobytes()).decode(), len(part)])
            except PlaywrightError as err:
                raise SsrconvError(f"{self.path}: {self.engine} failed running a batch of "
                                   f"{len(part)} ({_first_line(err)})") from None
            total_ms += got["ms"]
            for head in self.heads:
                out[head].append(self.head_values(head, got[head], len(part)))
        self.last_browser_ms = total_ms
        self.browser_ms_total += total_ms
        if not len(batch):
            return {h: np.zeros(0, np.float32) for h in self.heads}
        return {h: np.concatenate(v) for h, v in out.items()}

    def time_in_browser(self, batch, repeats: int) -> np.ndarray:
        """``repeats`` timings (ms) of session.run on one batch, measured inside the page
        (no Python/DevTools round trip): the per-call cost a web app sees."""
        batch = self.check_batch(batch)
        times = self.page.evaluate(self.time_js, [base64.b64encode(batch.tobytes()).decode(),
                                                  len(batch), int(repeats)])
        return np.asarray(times, dtype=np.float64)

    def describe(self) -> dict:
        return {**super().describe(), "runtime_version": getattr(self, "runtime_version", None),
                "threads": self.num_threads,
                "cross_origin_isolated": getattr(self, "cross_origin_isolated", None)}

    def close(self) -> None:
        """Close the page's browser, Playwright and the server (BrowserPage.close), and remove
        the private folder."""
        if self._page is not None:
            self._page.close()
            self._page = None
        if self._tmp is not None:
            remove_path(self._tmp)
            self._tmp = None


# LiteRT.js: the static batch B the model declares; a batch of N runs as N/B calls in the page.
_LITERT_LOAD = """async ([model, threads]) => {
  const L = await import('./litert/litert.mjs');
  await L.loadLiteRt(new URL('./litert/wasm/', location.href).href, { threads: false });
  const m = await L.loadAndCompile(model, { accelerator: 'wasm' });
  const inp = m.getInputDetails(), out = m.getOutputDetails();
  window.__ssrconv = { L, m, input: inp[0].name, batch: inp[0].shape[0] };
  return { inputs: inp.map((d) => d.name), input_shapes: inp.map((d) => Array.from(d.shape)),
           outputs: out.map((d) => d.name), isolated: self.crossOriginIsolated,
           version: null };
}"""

_LITERT_CALL = """
  const { L, m, input, batch } = window.__ssrconv;
  const face = 64 * 64 * 3;
  const call = async (data, offset) => {
    const t = new L.Tensor(data.slice(offset * face, (offset + batch) * face), [batch, 64, 64, 3]);
    const t0 = performance.now();
    const out = await m.run({ [input]: t });
    const ms = performance.now() - t0;
    const heads = {};
    for (const [k, v] of Object.entries(out)) { heads[k] = v.toTypedArray(); v.delete(); }
    t.delete();
    return { heads, ms };
  };
"""

_LITERT_RUN = """async ([b64, n]) => {""" + _LITERT_CALL + """
  const data = new Float32Array(Uint8Array.fromBase64(b64).buffer);
  const result = { ms: 0 };
  for (let i = 0; i < n; i += batch) {
    const { heads, ms } = await call(data, i);
    result.ms += ms;
    for (const [k, v] of Object.entries(heads)) (result[k] ??= []).push(...v);
  }
  return result;
}"""

_LITERT_TIME = """async ([b64, n, repeats]) => {""" + _LITERT_CALL + """
  const data = new Float32Array(Uint8Array.fromBase64(b64).buffer);
  const times = [];
  for (let r = 0; r < repeats; r++) {
    let total = 0;
    for (let i = 0; i < n; i += batch) total += (await call(data, i)).ms;
    times.push(total);
  }
  return times;
}"""


class LiteRtBrowserRuntime(BrowserRuntime):
    """``chromium-litert-wasm``: a static-batch ``.tflite`` in LiteRT.js (``@litertjs/core``,
    wasm, XNNPACK) in headless Chromium. LiteRT.js 2.5 has no input resize, so a dynamic-batch
    file is refused with the fix (``ssrconv export --batch 1``)."""

    engine = "chromium-litert-wasm"
    harness = ('<script type="importmap">' + json.dumps(
        {"imports": {"@litertjs/wasm-utils": "./litert/wasm-utils.mjs"}}) + "</script>")
    load_js, run_js, time_js = _LITERT_LOAD, _LITERT_RUN, _LITERT_TIME

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        super().__init__(path, num_threads=1, precision=precision)
        self.executed_precision = None  # LiteRT.js reports no per-kernel precision

    def _prepare(self) -> tuple[Path, str]:
        from ssrconv.formats import tflite_flatbuffer, web

        from ssrconv.targets import format_of

        if getattr(format_of(self.path), "family", None) != "tflite" or not self.path.is_file():
            raise ModelFileError(f"{self.path}: {self.engine} reads .tflite files")
        data = self.path.read_bytes()
        try:
            dynamic = tflite_flatbuffer.is_dynamic_batch(data)
        except Exception as err:  # the flatbuffer reader raises assorted types on garbage
            raise ModelFileError(f"{self.path}: not a readable .tflite ({type(err).__name__})") from None
        if dynamic:
            raise ModelFileError(f"{self.path}: input has a variable batch and LiteRT.js 2.5 "
                                 "cannot resize inputs; export a static-batch file with "
                                 "ssrconv export --to tflite --batch 1")
        self.backend = "tflite"
        self._tmp = track(Path(tempfile.mkdtemp(prefix="ssrconv-litert-")))
        self.runtime_version = web.vendor_litert(self._tmp)
        shutil.copyfile(self.path, self._tmp / "model.tflite")
        return self._tmp, "model.tflite"



ENGINES = {BrowserRuntime.engine: BrowserRuntime, LiteRtBrowserRuntime.engine: LiteRtBrowserRuntime}


def litert_refuses(path: Path) -> str | None:
    """Why LiteRT.js cannot run ``path`` by design (a variable-batch input: it has no resize
    call), or None."""
    from ssrconv.formats import tflite_flatbuffer

    try:
        dynamic = tflite_flatbuffer.is_dynamic_batch(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - unreadable: the engine's own load reports it
        return None
    if dynamic:
        return ("LiteRT.js 2.5 cannot resize a variable-batch input; it runs static-batch "
                ".tflite files: ssrconv export --to tflite --batch 1")
    return None


def _check_onnx(path: Path) -> None:
    """Refuse a file that does not parse as ONNX before the browser is handed it."""
    import onnx

    try:
        onnx.load_model_from_string(path.read_bytes())
    except Exception as err:  # protobuf raises several unrelated types on garbage
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None


def _close_ref(ref) -> None:
    runtime = ref()
    if runtime is not None:
        runtime.close()


def _first_line(err) -> str:
    text = str(getattr(err, "message", err)).strip()
    return text.splitlines()[0] if text else type(err).__name__
