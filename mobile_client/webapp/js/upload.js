// Resumable uploads of input files from the phone: tus 1.0 (tus-js-client) to /api/v1/uploads.
// The SHA-256 is computed here first and sent as metadata; the peer verifies the whole file
// when the last byte arrives, and only then is it usable as a job input (its `path`).
import { Upload } from "../vendor/tus.js";
import { csrfToken, getJSON, sha256Hex } from "./api.js";
import { formatBytes, h } from "./dom.js";

const RETRY_DELAYS = [0, 500, 1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000, 8000];

/**
 * Upload one File; resolves with {path, size, sha256} once the peer has verified it.
 * `ui` gets progress: ui.progress(sent, total), ui.say(text).
 */
export async function uploadFile(file, ui) {
  ui.say(`Computing SHA-256 of ${file.name}…`);
  const sha256 = await sha256Hex(file, {
    onProgress: (done, all) => ui.say(`Computing SHA-256 of ${file.name}… ${Math.floor((100 * done) / all)}%`),
  });
  return new Promise((resolve, reject) => {
    let lastSent = 0;
    const upload = new Upload(file, {
      endpoint: "/api/v1/uploads",
      chunkSize: 1024 * 1024,
      retryDelays: RETRY_DELAYS,
      metadata: { filename: file.name, sha256 },
      headers: { "X-CSRF-Token": csrfToken() || "" },
      removeFingerprintOnSuccess: true,
      // A retry after a dropped link: the tus client asks the peer (HEAD) where to continue.
      onShouldRetry(err, attempt) {
        const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
        if (status === 460 || (status >= 400 && status < 500 && status !== 409 && status !== 423 && status !== 429)) return false;
        ui.say(`Link dropped at ${formatBytes(lastSent)} — resuming (attempt ${attempt + 1})…`);
        return true;
      },
      onProgress(sent, total) { lastSent = sent; ui.progress(sent, total); },
      async onSuccess() {
        try {
          const info = await getJSON(new URL(upload.url, location.href).pathname);
          if (!info.complete || !info.path) throw new Error("the peer has not finished the upload");
          resolve({ path: info.path, size: info.length, sha256: info.sha256 || sha256 });
        } catch (err) { reject(err); }
      },
      onError(err) {
        const res = err.originalResponse;
        let message = err.message;
        if (res) {
          try { message = JSON.parse(res.getBody()).error || message; } catch { /* not JSON */ }
          if (res.getStatus() === 460) message = `the file changed on the way (SHA-256 mismatch): ${message}`;
        }
        reject(new Error(message));
      },
    });
    // Resume an upload of the same file started before a reload.
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    }, () => upload.start());
  });
}

/** The "Upload from this phone" control: each verified file becomes an input via onDone(path). */
export function uploadControl(onDone) {
  const input = h("input", { type: "file", id: "upload-files", multiple: true });
  const list = h("ul", { class: "stack", "aria-label": "Uploads" });
  input.addEventListener("change", async () => {
    const files = [...input.files];
    input.value = "";
    for (const file of files) {
      const bar = h("progress", { max: String(file.size || 1), value: "0", "aria-label": `upload ${file.name}` });
      const line = h("span", { role: "status", "aria-live": "polite" }, `Waiting: ${file.name}`);
      const item = h("li", { class: "card", "aria-label": `upload ${file.name}` }, h("strong", {}, file.name), bar, line);
      list.append(item);
      const ui = {
        say: (text) => { line.textContent = text; },
        progress: (sent, total) => { bar.max = total; bar.value = sent; line.textContent = `${formatBytes(sent)} of ${formatBytes(total)} sent`; },
      };
      try {
        const result = await uploadFile(file, ui);
        bar.value = bar.max;
        line.textContent = `Uploaded and verified (SHA-256 ${result.sha256.slice(0, 12)}…): ${result.path}`;
        item.setAttribute("aria-label", `upload ${file.name}: verified`);
        onDone(result.path);
      } catch (err) {
        line.textContent = `Upload of ${file.name} failed: ${err.message}`;
        line.className = "error";
        item.setAttribute("aria-label", `upload ${file.name}: failed`);
      }
    }
  });
  return h("div", {},
    h("label", { for: "upload-files" }, "Upload inputs from this phone"),
    input, list);
}
