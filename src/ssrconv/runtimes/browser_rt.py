"""Browser engines: SSR-Net in a real headless Chromium, driven by Playwright for Python.

``chromium-ort-wasm`` runs an ``.onnx`` file or a ``.web`` folder in onnxruntime-web
(WebAssembly, the same files ``--to web`` vendors). The folder is served from 127.0.0.1 by a
small threaded server on a random port, with the cross-origin isolation headers (COOP/COEP)
that give ``performance.now()`` 5 us resolution (100 us without) and allow wasm threads.
Batches cross into the page as base64 float32; ages and P(male) come back as numbers. The page
side of each engine is a module in ``browser_js/`` (package data), read at run time and
embedded in the blank page the engine opens.

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
from ssrconv.formats import HEADS, web
from ssrconv.formats.web import BrowserSetupError
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
PAGE_JS = Path(__file__).with_name("browser_js")  # each engine's page module (package data)


def chromium_path() -> Path:
    """The Chromium executable the browser engines launch; BrowserSetupError when missing."""
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


class BrowserRuntime(Runtime):
    """``chromium-ort-wasm``: an .onnx file or a .web folder in onnxruntime-web in headless
    Chromium. ``num_threads`` sets ort-web's wasm threads (default 1)."""

    engine = "chromium-ort-wasm"
    page_module = "ort.mjs"  # in PAGE_JS: defines window.__ssrconvEngine.{load, run, time}
    import_map: dict | None = None  # bare module names the page module's imports need

    @classmethod
    def harness(cls) -> str:
        """The HTML the blank page gets: the import map (if any), then the page module."""
        source = (PAGE_JS / cls.page_module).read_text(encoding="utf-8")
        imports = ("" if cls.import_map is None else
                   f'<script type="importmap">{json.dumps(cls.import_map)}</script>')
        return f'{imports}<script type="module">\n{source}</script>'

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
        """(folder to serve, model file in it): a folder package (``.web``) as is, with the
        model its format names as its inner artifact; a bare model (``.onnx``) in a private
        folder with the library, the vendored runtime and a copy of it. The artifact was
        verified by open_artifact."""
        from ssrconv.targets import ENGINES, format_of

        fmt = format_of(self.path)
        if fmt is None or fmt.family not in ENGINES[self.engine].reads:
            raise ModelFileError(f"{self.path}: {self.engine} reads "
                                 f"{', '.join(ENGINES[self.engine].reads)} artifacts")
        inner = fmt.inner_artifact(self.path)
        if inner is not None:
            return self.path, inner.relative_to(self.path).as_posix()
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        self._tmp = track(Path(tempfile.mkdtemp(prefix="ssrconv-browser-")))
        web.build_folder(self._tmp, self.path, "model.onnx", detector=False)
        return self._tmp, "model.onnx"

    def _start(self, root: Path, model: str, executable: Path) -> None:
        from playwright.sync_api import Error as PlaywrightError

        self._page = BrowserPage(root, executable, self.harness())
        self.page = self._page.page
        try:
            self.page.goto(self._page.url + HARNESS)
            info = self._call("load", [model, self.num_threads])
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
                got = self._call("run", [base64.b64encode(part.tobytes()).decode(), len(part)])
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
        times = self._call("time", [base64.b64encode(batch.tobytes()).decode(), len(batch),
                                    int(repeats)])
        return np.asarray(times, dtype=np.float64)

    def _call(self, name: str, args: list):
        """``window.__ssrconvEngine[name](args)`` in the page (the page module's function)."""
        return self.page.evaluate(f"(args) => window.__ssrconvEngine.{name}(args)", args)

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


class LiteRtBrowserRuntime(BrowserRuntime):
    """``chromium-litert-wasm``: a static-batch ``.tflite`` in LiteRT.js (``@litertjs/core``,
    wasm, XNNPACK) in headless Chromium. LiteRT.js 2.5 has no input resize, so a dynamic-batch
    file is refused with the fix (``ssrconv export --batch 1``)."""

    engine = "chromium-litert-wasm"
    page_module = "litert.mjs"
    import_map = web.LITERT_IMPORT_MAP

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        super().__init__(path, num_threads=1, precision=precision)
        self.executed_precision = None  # LiteRT.js reports no per-kernel precision

    def _prepare(self) -> tuple[Path, str]:
        from ssrconv.formats import tflite_flatbuffer
        from ssrconv.targets import ENGINES, format_of

        fmt = format_of(self.path)
        if fmt is None or fmt.family not in ENGINES[self.engine].reads or not self.path.is_file():
            raise ModelFileError(f"{self.path}: {self.engine} reads "
                                 f"{', '.join(ENGINES[self.engine].reads)} files")
        data = self.path.read_bytes()
        try:
            dynamic = tflite_flatbuffer.is_dynamic_batch(data)
        except Exception as err:  # the flatbuffer reader raises assorted types on garbage
            raise ModelFileError(f"{self.path}: not a readable .tflite ({type(err).__name__})") from None
        if dynamic:
            raise ModelFileError(f"{self.path}: input has a variable batch and LiteRT.js 2.5 "
                                 "cannot resize inputs; export a static-batch file with "
                                 "ssrconv export --to tflite --batch 1")
        self._tmp = track(Path(tempfile.mkdtemp(prefix="ssrconv-litert-")))
        self.runtime_version = web.vendor_litert(self._tmp)
        shutil.copyfile(self.path, self._tmp / "model.tflite")
        return self._tmp, "model.tflite"


ENGINES = {BrowserRuntime.engine: BrowserRuntime, LiteRtBrowserRuntime.engine: LiteRtBrowserRuntime}


def litert_refuses(path: Path, versions: dict | None = None) -> str | None:
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


def _close_ref(ref) -> None:
    runtime = ref()
    if runtime is not None:
        runtime.close()


def _first_line(err) -> str:
    text = str(getattr(err, "message", err)).strip()
    return text.splitlines()[0] if text else type(err).__name__
