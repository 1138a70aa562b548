// The page side of chromium-litert-wasm (ssrconv/runtimes/browser_rt.py): LiteRT.js (wasm,
// XNNPACK) on a static-batch .tflite. The model declares its batch B; a batch of N faces runs
// as N/B calls. The runtime embeds this file in its blank page as a module script (after the
// import map for @litertjs/wasm-utils); Python calls window.__ssrconvEngine.{load, run, time}.

const FACE = 64 * 64 * 3;
let L;
let model;
let input;
let batch;

async function load([file, threads]) {
  L = await import('./litert/litert.mjs');
  await L.loadLiteRt(new URL('./litert/wasm/', location.href).href, { threads: false });
  model = await L.loadAndCompile(file, { accelerator: 'wasm' });
  const inp = model.getInputDetails();
  const out = model.getOutputDetails();
  input = inp[0].name;
  batch = inp[0].shape[0];
  return { inputs: inp.map((d) => d.name), input_shapes: inp.map((d) => Array.from(d.shape)),
           outputs: out.map((d) => d.name), isolated: self.crossOriginIsolated,
           version: null };
}

async function call(data, offset) {
  const t = new L.Tensor(data.slice(offset * FACE, (offset + batch) * FACE), [batch, 64, 64, 3]);
  const t0 = performance.now();
  const out = await model.run({ [input]: t });
  const ms = performance.now() - t0;
  const heads = {};
  for (const [k, v] of Object.entries(out)) { heads[k] = v.toTypedArray(); v.delete(); }
  t.delete();
  return { heads, ms };
}

async function run([b64, n]) {
  const data = new Float32Array(Uint8Array.fromBase64(b64).buffer);
  const result = { ms: 0 };
  for (let i = 0; i < n; i += batch) {
    const { heads, ms } = await call(data, i);
    result.ms += ms;
    for (const [k, v] of Object.entries(heads)) (result[k] ??= []).push(...v);
  }
  return result;
}

async function time([b64, n, repeats]) {
  const data = new Float32Array(Uint8Array.fromBase64(b64).buffer);
  const times = [];
  for (let r = 0; r < repeats; r++) {
    let total = 0;
    for (let i = 0; i < n; i += batch) total += (await call(data, i)).ms;
    times.push(total);
  }
  return times;
}

window.__ssrconvEngine = { load, run, time };
