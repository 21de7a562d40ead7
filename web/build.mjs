// Bundles the web app's two npm dependencies into minified ES modules (one file each):
//   vendor/tus.js     tus-js-client's browser entry (resumable uploads)
//   vendor/sha256.js  @noble/hashes' SHA-256 (incremental: verifies files too big for crypto.subtle)
//   npm ci --prefix web && npm run build --prefix web     -> writes them into mobile_client/webapp/vendor/
//   npm run check --prefix web                            -> fails if a committed file differs
// Deterministic: same lockfile -> same bytes (no timestamps, no absolute paths, no source map).
import { build } from "esbuild";
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const vendor = path.join(here, "..", "mobile_client", "webapp", "vendor");

async function versionOf(pkg) {
  return JSON.parse(await readFile(path.join(here, "node_modules", pkg, "package.json"), "utf8")).version;
}

const BUNDLES = [
  { file: "tus.js", pkg: "tus-js-client", license: "MIT",
    entry: 'export { Upload, isSupported, canStoreURLs } from "tus-js-client";' },
  { file: "sha256.js", pkg: "@noble/hashes", license: "MIT",
    entry: 'export { sha256 } from "@noble/hashes/sha2.js";' },
];

let failed = false;
for (const bundle of BUNDLES) {
  const version = await versionOf(bundle.pkg);
  const result = await build({
    stdin: { contents: bundle.entry, resolveDir: here, sourcefile: `${bundle.file}-entry.js` },
    bundle: true,
    format: "esm",
    platform: "browser",
    mainFields: ["browser", "module", "main"],
    target: ["es2020", "safari15"],
    minify: true,
    legalComments: "none",
    banner: { js: `/* ${bundle.pkg} ${version} (${bundle.license}), bundled by web/build.mjs */` },
    define: { "process.env.NODE_ENV": '"production"' },
    write: false,
    logLevel: "warning",
  });
  const bytes = result.outputFiles[0].contents;
  const outfile = path.join(vendor, bundle.file);
  if (process.argv.includes("--check")) {
    const current = await readFile(outfile).catch(() => Buffer.alloc(0));
    if (Buffer.compare(Buffer.from(bytes), current) !== 0) {
      console.error(`vendor/${bundle.file} does not match the sources: run npm run build --prefix web`);
      failed = true;
    } else {
      console.log(`vendor/${bundle.file} matches the sources (${bytes.length} bytes)`);
    }
  } else {
    await writeFile(outfile, bytes);
    console.log(`wrote vendor/${bundle.file} (${bytes.length} bytes)`);
  }
}
if (failed) process.exit(1);
