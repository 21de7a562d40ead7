// Bundles tus-js-client's browser entry into one minified ES module for the web app:
//   npm ci --prefix web && npm run build --prefix web     -> writes mobile_client/webapp/vendor/tus.js
//   npm run check --prefix web                            -> fails if the committed file differs
// Deterministic: same lockfile -> same bytes (no timestamps, no absolute paths, no source map).
import { build } from "esbuild";
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const outfile = path.join(here, "..", "mobile_client", "webapp", "vendor", "tus.js");
const { version } = JSON.parse(await readFile(path.join(here, "node_modules", "tus-js-client", "package.json"), "utf8"));

const result = await build({
  stdin: {
    contents: 'export { Upload, isSupported, canStoreURLs } from "tus-js-client";',
    resolveDir: here,
    sourcefile: "tus-entry.js",
  },
  bundle: true,
  format: "esm",
  platform: "browser",
  mainFields: ["browser", "module", "main"],
  target: ["es2020", "safari14"],
  minify: true,
  legalComments: "none",
  banner: { js: `/* tus-js-client ${version} (MIT), bundled by web/build.mjs */` },
  define: { "process.env.NODE_ENV": '"production"' },
  write: false,
  logLevel: "warning",
});

const bytes = result.outputFiles[0].contents;
if (process.argv.includes("--check")) {
  const current = await readFile(outfile).catch(() => Buffer.alloc(0));
  if (Buffer.compare(Buffer.from(bytes), current) !== 0) {
    console.error(`${path.relative(process.cwd(), outfile)} does not match the sources: run npm run build --prefix web`);
    process.exit(1);
  }
  console.log(`vendor/tus.js matches the sources (${bytes.length} bytes)`);
} else {
  await writeFile(outfile, bytes);
  console.log(`wrote vendor/tus.js (${bytes.length} bytes)`);
}
