// The demo page: a photo or the webcam -> faces -> "34, M" drawn on each box.
import { bitmapPixels, configure, decodeImage, label, loadModel, predictImage } from "./ssrconv.mjs";

const $ = (id) => document.getElementById(id);
const status = (text, state) => { $("status").textContent = text; $("status").dataset.state = state; };
const config = await (await fetch("model.json")).json();

configure({ numThreads: 1 });
const ready = Promise.all([loadModel(config.detector), loadModel(config.model)]);
const app = { ready, lastResult: null, config, frames: 0 };
window.ssrconvApp = app;

function draw(image, faces, source) {
  const canvas = $("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0);
  const thick = Math.max(1, Math.round(Math.max(image.width, image.height) / 500));
  ctx.lineWidth = thick;
  for (const f of faces) {
    const [x, y, w, h] = f.box;
    ctx.strokeStyle = "rgb(0,220,0)";
    ctx.strokeRect(x, y, w, h);
    const text = label(f.age, f.p_male);
    ctx.font = `${Math.max(12, Math.round(w / 5))}px sans-serif`;
    const m = ctx.measureText(text), th = m.actualBoundingBoxAscent + m.actualBoundingBoxDescent;
    const top = Math.max(0, y - th - 6);
    ctx.fillStyle = "rgb(0,220,0)";
    ctx.fillRect(x, top, m.width + 6, th + 6);
    ctx.fillStyle = "black";
    ctx.fillText(text, x + 3, top + 3 + m.actualBoundingBoxAscent);
  }
}

function table(faces) {
  const body = $("faces").tBodies[0];
  body.replaceChildren(...faces.map((f, i) => {
    const row = document.createElement("tr");
    const cells = [i, ...f.box.map((v) => v.toFixed(0)), f.score.toFixed(3),
                   f.age === undefined ? "" : f.age.toFixed(2),
                   f.p_male === undefined ? "" : f.p_male.toFixed(3), label(f.age, f.p_male)];
    for (const c of cells) row.appendChild(Object.assign(document.createElement("td"), { textContent: c }));
    return row;
  }));
}

async function run(image, source) {
  const [detector, ssrnet] = await ready;
  const t0 = performance.now();
  const result = await predictImage(detector, ssrnet, image);
  result.totalMs = performance.now() - t0;
  draw(image, result.faces, source);
  table(result.faces);
  app.lastResult = result;
  return result;
}

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  status(`reading ${file.name}...`, "busy");
  try {
    const image = await decodeImage(file);
    const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none" });
    const r = await run(image, bitmap);
    status(`${r.faces.length} face(s) in ${r.totalMs.toFixed(1)} ms (SSR-Net ${r.ms.toFixed(2)} ms)`, "done");
  } catch (err) {
    status(`error: ${err.message ?? err}`, "error");
  }
});

$("webcam").addEventListener("click", async () => {
  const video = $("video");
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    await video.play();
  } catch (err) {
    status(`webcam: ${err.message ?? err}`, "error");
    return;
  }
  const loop = async () => {
    if (video.readyState >= 2) {
      const r = await run(bitmapPixels(video, video.videoWidth, video.videoHeight), video);
      app.frames += 1;
      status(`webcam: ${r.faces.length} face(s), ${r.totalMs.toFixed(0)} ms per frame`, "webcam");
    }
    requestAnimationFrame(loop);
  };
  loop();
});

ready.then(() => status("ready: choose a photo or start the webcam", "ready"),
           (err) => status(`error loading the models: ${err.message ?? err}`, "error"));
