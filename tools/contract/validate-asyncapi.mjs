// Validate an AsyncAPI document with the official parser (@asyncapi/parser, pinned in package.json).
// Usage: node validate-asyncapi.mjs FILE
// Prints every diagnostic (severity, JSON path, message); exits 1 when any is an error or a warning,
// 2 when the file cannot be read, 0 when the document is valid and clean.
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const file = process.argv[2];
if (!file || process.argv.length > 3) {
  console.error("usage: node validate-asyncapi.mjs FILE");
  process.exit(2);
}

let text;
try {
  text = await readFile(file, "utf8");
} catch (err) {
  console.error(`${file}: cannot read: ${err.message}`);
  process.exit(2);
}

const names = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k.toLowerCase()]));
const { document, diagnostics } = await new Parser().parse(text, { source: file });
const failing = [DiagnosticSeverity.Error, DiagnosticSeverity.Warning];
let failed = document === undefined;
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join(".") : "(document)";
  const line = d.range ? `:${d.range.start.line + 1}` : "";
  console.error(`${file}${line}: ${names[d.severity] ?? d.severity}: ${where}: ${d.message} [${d.code}]`);
  if (failing.includes(d.severity)) failed = true;
}
if (failed) {
  console.error(`${file}: not a valid AsyncAPI document (${diagnostics.length} diagnostic(s))`);
  process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()}`);
