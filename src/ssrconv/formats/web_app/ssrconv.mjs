// ssrconv's browser library: YuNet face detection and SSR-Net age/gender in onnxruntime-web
// (wasm). Plain ES module, no build step. The preprocessing follows ssrconv's one contract:
// box grown by 0.4 of its size on each side, clipped, resized to 64x64 bilinear (OpenCV's
// INTER_LINEAR fixed-point arithmetic), BGR float32 0..255, NHWC.
import * as ort from "./ort/ort.wasm.min.mjs";

export const INPUT_SIZE = 64;
export const MARGIN = 0.4;
export const YUNET_MAX_SIDE = 1600;  // as ssrconv.detect: faces SSR-Net can read survive it
export { ort };

let configured = false;

/** Point onnxruntime-web at the vendored wasm files; threads: 1 unless asked (needs
 *  cross-origin isolation for more than one). */
export function configure({ numThreads = 1 } = {}) {
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = numThreads;
  ort.env.wasm.proxy = false;
  configured = true;
}

/** An InferenceSession of the model at `url` on the wasm execution provider. */
export async function loadModel(url) {
  if (!configured) configure();
  return ort.InferenceSession.create(url, { executionProviders: ["wasm"],
                                           graphOptimizationLevel: "all" });
}

/** SSR-Net on `n` faces (Float32Array n*64*64*3, BGR 0..255): {age, p_male} Float32Arrays
 *  (the heads the model has) and the time inside session.run in ms. */
export async function runSsrnet(session, data, n) {
  const input = new ort.Tensor("float32", data, [n, INPUT_SIZE, INPUT_SIZE, 3]);
  const t0 = performance.now();
  const out = await session.run({ [session.inputNames[0]]: input });
  const ms = performance.now() - t0;
  const heads = {};
  for (const name of session.outputNames) heads[name] = out[name].data;
  return { heads, ms };
}

/** Decode an image Blob to RGBA pixels as stored in the file (no colour conversion, so the
 *  pixels match OpenCV's decoder). */
export async function decodeImage(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none",
                                                 premultiplyAlpha: "none" });
  return bitmapPixels(bitmap);
}

/** RGBA pixels of anything drawable (ImageBitmap, video frame, image element). */
export function bitmapPixels(source, width = source.width, height = source.height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(source, 0, 0, width, height);
  return { data: ctx.getImageData(0, 0, width, height).data, width, height };
}

// OpenCV's bilinear coefficients (resize.cpp): half-pixel centres, clamped, 11-bit fixed point.
function linearCoeffs(dsize, ssize) {
  const scale = 1 / (dsize / ssize);
  const ofs = new Int32Array(dsize), a0 = new Int32Array(dsize), a1 = new Int32Array(dsize);
  for (let d = 0; d < dsize; d++) {
    let f = Math.fround((d + 0.5) * scale - 0.5);
    let s = Math.floor(f);
    f = Math.fround(f - s);
    if (s < 0) { f = 0; s = 0; }
    if (s >= ssize - 1) { f = 0; s = ssize - 1; }
    ofs[d] = s;
    a0[d] = roundEven(Math.fround(1 - f) * 2048);
    a1[d] = roundEven(f * 2048);
  }
  return { ofs, a0, a1 };
}

function roundEven(v) {
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** Expand an (x, y, w, h) box by MARGIN on each side, clipped: [x1, y1, x2, y2) as ssrconv's
 *  expand_box (the original SSR-Net demo's integer bounds). */
export function expandBox(box, width, height, margin = MARGIN) {
  const [x, y, w, h] = box;
  const x1 = Math.max(Math.trunc(x - margin * w), 0);
  const y1 = Math.max(Math.trunc(y - margin * h), 0);
  const x2 = Math.min(Math.trunc(x + w + margin * w), width - 1) + 1;
  const y2 = Math.min(Math.trunc(y + h + margin * h), height - 1) + 1;
  return (x2 <= x1 || y2 <= y1) ? null : [x1, y1, x2, y2];
}

/** The model input for the face in `box` of an RGBA image: 64*64*3 float32 BGR 0..255
 *  (null when the box lies outside the image). Writes into `out` at `offset` if given. */
export function cropFace(image, box, out = null, offset = 0) {
  const bounds = expandBox(box, image.width, image.height);
  if (bounds === null) return null;
  const [x1, y1, x2, y2] = bounds;
  const sw = x2 - x1, sh = y2 - y1, n = INPUT_SIZE, src = image.data, stride = image.width * 4;
  const X = linearCoeffs(n, sw), Y = linearCoeffs(n, sh);
  const dst = out ?? new Float32Array(n * n * 3);
  const row0 = new Int32Array(n * 3), row1 = new Int32Array(n * 3);
  const hrow = (r, buf) => {
    const base = (y1 + r) * stride;
    for (let d = 0; d < n; d++) {
      const s = X.ofs[d], sNext = Math.min(s + 1, sw - 1);
      const p0 = base + (x1 + s) * 4, p1 = base + (x1 + sNext) * 4;
      for (let c = 0; c < 3; c++) {
        const rgba = 2 - c;  // BGR output from RGBA input
        buf[d * 3 + c] = src[p0 + rgba] * X.a0[d] + src[p1 + rgba] * X.a1[d];
      }
    }
  };
  for (let d = 0; d < n; d++) {
    const s = Y.ofs[d];
    hrow(s, row0);
    hrow(Math.min(s + 1, sh - 1), row1);
    const b0 = Y.a0[d], b1 = Y.a1[d];
    for (let i = 0; i < n * 3; i++) {
      // OpenCV's SIMD vertical pass (VResizeLinearVec_32s8u): >>4, 16-bit high multiply, +2 >>2
      const v = (((row0[i] >> 4) * b0) >> 16) + (((row1[i] >> 4) * b1) >> 16);
      dst[offset + d * n * 3 + i] = Math.min(255, Math.max(0, (v + 2) >> 2));
    }
  }
  return dst;
}

/** YuNet (OpenCV's FaceDetectorYN post-processing) on an RGBA image: [{box:[x,y,w,h], score}]
 *  in image pixels. Large images are scaled down to YUNET_MAX_SIDE for detection only. */
export async function detectFaces(session, image, { scoreThreshold = 0.7, nmsThreshold = 0.3,
                                                     topK = 5000 } = {}) {
  let scale = Math.min(1, YUNET_MAX_SIDE / Math.max(image.width, image.height));
  let small = image;
  if (scale < 1) {
    const w = Math.max(1, Math.round(image.width * scale)), h = Math.max(1, Math.round(image.height * scale));
    const canvas = new OffscreenCanvas(image.width, image.height);
    canvas.getContext("2d").putImageData(new ImageData(image.data, image.width, image.height), 0, 0);
    small = bitmapPixels(canvas, w, h);
  }
  const w = small.width, h = small.height;
  if (Math.min(w, h) < 8) return [];
  const padW = (Math.trunc((w - 1) / 32) + 1) * 32, padH = (Math.trunc((h - 1) / 32) + 1) * 32;
  const blob = new Float32Array(3 * padH * padW);  // zero padding bottom/right, as OpenCV
  const plane = padH * padW;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const p = (y * w + x) * 4, q = y * padW + x;
      blob[q] = small.data[p + 2];
      blob[plane + q] = small.data[p + 1];
      blob[2 * plane + q] = small.data[p];
    }
  }
  const out = await session.run({ [session.inputNames[0]]:
                                   new ort.Tensor("float32", blob, [1, 3, padH, padW]) });
  const candidates = [];
  for (const stride of [8, 16, 32]) {
    const cols = padW / stride, rows = padH / stride;
    const cls = out[`cls_${stride}`].data, obj = out[`obj_${stride}`].data;
    const bbox = out[`bbox_${stride}`].data;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const score = Math.sqrt(Math.min(1, Math.max(0, cls[i])) * Math.min(1, Math.max(0, obj[i])));
        if (!(score > scoreThreshold)) continue;
        const cx = (c + bbox[i * 4]) * stride, cy = (r + bbox[i * 4 + 1]) * stride;
        const bw = Math.exp(bbox[i * 4 + 2]) * stride, bh = Math.exp(bbox[i * 4 + 3]) * stride;
        candidates.push({ box: [cx - bw / 2, cy - bh / 2, bw, bh], score });
      }
    }
  }
  const kept = nms(candidates, nmsThreshold, topK);
  const faces = [];
  for (const f of kept) {
    if (!f.box.every(Number.isFinite)) continue;
    const box = f.box.map((v) => v / scale);
    if (box[2] >= 1 && box[3] >= 1) faces.push({ box, score: f.score });
  }
  return faces;
}

// cv::dnn::NMSBoxes on integer rects, as FaceDetectorYN calls it.
function nms(candidates, threshold, topK) {
  const order = candidates.slice().sort((a, b) => b.score - a.score).slice(0, topK);
  const rect = (b) => b.map((v) => Math.trunc(v));
  const kept = [];
  for (const cand of order) {
    const [ax, ay, aw, ah] = rect(cand.box);
    let keep = true;
    for (const k of kept) {
      const [bx, by, bw, bh] = rect(k.box);
      const iw = Math.min(ax + aw, bx + bw) - Math.max(ax, bx);
      const ih = Math.min(ay + ah, by + bh) - Math.max(ay, by);
      const inter = iw > 0 && ih > 0 ? iw * ih : 0;
      const union = aw * ah + bw * bh - inter;
      if (union > 0 && inter / union > threshold) { keep = false; break; }
    }
    if (keep) kept.push(cand);
  }
  return kept;
}

/** "34, M": the annotation ssrconv predict draws. */
export function label(age, pMale) {
  const parts = [];
  if (age !== undefined) parts.push(age.toFixed(0));
  if (pMale !== undefined) parts.push(pMale > 0.5 ? "M" : "F");
  return parts.join(", ");
}

/** Detect, crop and read every face of an RGBA image: [{box, score, age, p_male}] and the
 *  SSR-Net time in ms (all faces in one batch, as ssrconv predict). */
export async function predictImage(detector, ssrnet, image) {
  const found = await detectFaces(detector, image);
  const faces = [], size = INPUT_SIZE * INPUT_SIZE * 3;
  const batch = new Float32Array(found.length * size);
  for (const f of found) {
    if (cropFace(image, f.box, batch, faces.length * size) !== null) faces.push({ ...f });
  }
  if (faces.length === 0) return { faces, ms: 0 };
  const { heads, ms } = await runSsrnet(ssrnet, batch.subarray(0, faces.length * size), faces.length);
  faces.forEach((f, i) => {
    if (heads.age) f.age = heads.age[i];
    if (heads.p_male) f.p_male = heads.p_male[i];
  });
  return { faces, ms };
}
