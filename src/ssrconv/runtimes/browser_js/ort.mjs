// The page side of chromium-ort-wasm (ssrconv/runtimes/browser_rt.py): loads the model with the
// folder's own ssrconv.mjs (onnxruntime-web, wasm) and runs or times batches that arrive as
// base64 float32. The runtime embeds this file in its blank page as a module script; the page's
// Python side calls window.__ssrconvEngine.{load, run, time}.

let lib;
let session;

async function load([model, threads]) {
  lib = await import('./ssrconv.mjs');
  lib.configure({ numThreads: threads });
  session = await lib.loadModel(model);
  return { inputs: session.inputNames, outputs: session.outputNames,
           isolated: self.crossOriginIsolated, version: lib.ort.env.versions.web };
}

async function run([b64, n]) {
  const bytes = Uint8Array.fromBase64(b64);
  const { heads, ms } = await lib.runSsrnet(session, new Float32Array(bytes.buffer), n);
  const out = { ms };
  for (const [k, v] of Object.entries(heads)) out[k] = Array.from(v);
  return out;
}

async function time([b64, n, repeats]) {
  const data = new Float32Array(Uint8Array.fromBase64(b64).buffer);
  const times = [];
  for (let i = 0; i < repeats; i++) times.push((await lib.runSsrnet(session, data, n)).ms);
  return times;
}

window.__ssrconvEngine = { load, run, time };
