#!/usr/bin/env node
// Builds static/snippet.js, the file GET /snippet.js serves, from static/src/snippet.js:
//   node scripts/build-snippet.mjs [OUTFILE]     (npm run build; OUTFILE defaults to static/snippet.js)
// CI builds into a temporary file and compares it with the committed one.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SOURCE = "static/src/snippet.js";
const OUTFILE = process.argv[2] ?? join(ROOT, "static/snippet.js");

// The gateway fills the slot with its counter id (gateway/intake/snippet.py, MOD_ID_SLOT), but
// esbuild keeps no comment inside an expression, not even /*! ... */: the slot goes through the
// build as a string literal no source contains, and is put back afterwards.
const SLOT = '/*CTGW_MOD_ID*/""';
const STAND_IN = '"ctgw:mod-id-slot"';

// Syntax is lowered only for what the targets lack: the last two versions of Chrome, Firefox,
// Safari and Yandex Browser (Chromium) implement all of ES2022, regex lookbehind and \p{...}
// included. Browser targets (chrome120 and the like) would not do: esbuild's compatibility table
// lists \p{...} as unsupported in every Chrome and Safari version, and turns such regexes into
// new RegExp(...) calls built at run time.
const TARGET = "es2022";

const once = (text, part, where) => {
  const count = text.split(part).length - 1;
  if (count !== 1) throw new Error(`${where} has ${part} ${count} times, not once`);
};

const source = readFileSync(join(ROOT, SOURCE), "utf8");
once(source, SLOT, SOURCE);
if (source.includes(STAND_IN)) throw new Error(`${SOURCE} contains ${STAND_IN}`);
// bundle, on a script that imports nothing, is only what lets esbuild see the whole file: it
// then also writes `let` for `const`; format "esm" adds no wrapper around the source's own one.
const built = await esbuild.build({
  stdin: { contents: source.replace(SLOT, STAND_IN), sourcefile: SOURCE, loader: "js" },
  bundle: true,
  format: "esm",
  write: false,
  minify: true,
  target: TARGET,
  // Cyrillic in the field-name patterns: 2 bytes each as UTF-8, 6 as \uXXXX escapes.
  charset: "utf8",
  legalComments: "none",
  logLevel: "warning",
});
const code = built.outputFiles[0].text;
once(code, STAND_IN, "esbuild's output");
if (code.split("\n").some((line) => line.trimStart().startsWith("//"))) {
  // The gateway drops whole-line // comments: a code line starting so would vanish.
  throw new Error("esbuild's output has a line starting with //");
}
const header =
  `// ct-gateway form-capture snippet, built from ${SOURCE} by npm run build (esbuild ${esbuild.version}).\n` +
  "// Do not edit: change the source and rebuild. The gateway serves this without its // lines.\n";
writeFileSync(OUTFILE, header + code.replace(STAND_IN, SLOT));
