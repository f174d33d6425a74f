// TypeScript declarations for tokenwire's jobs and events, generated from the JSON Schemas with
// json-schema-to-typescript (pinned in package.json).
// Usage: node generate-types.mjs SCHEMA_DIR OUT   (OUT "-" writes to stdout)
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { compile } from "json-schema-to-typescript";

const [dir, out] = process.argv.slice(2);
if (!dir || !out || process.argv.length > 4) {
  console.error("usage: node generate-types.mjs SCHEMA_DIR OUT");
  process.exit(2);
}

const FILES = ["job.schema.json", "event.schema.json"];
const BANNER = [
  "// tokenwire's jobs and events as TypeScript declarations, generated from",
  `// schemas/${FILES.join(" and schemas/")} by json-schema-to-typescript.`,
  "// Do not edit: run `npm --prefix tools/contract run types` after `tokenwire schema`.",
  "// The five event types are named <Type>Event (their schema titles are Start, Token, ...). Event",
  "// interfaces allow fields a later version adds. The job's api rules (`input` for native and",
  "// completions, `messages` for chat) and its ranges are in the schema, not in these types.",
].join("\n");

const parts = [];
for (const name of FILES) {
  const path = join(dir, name);
  const schema = JSON.parse(await readFile(path, "utf8"));
  delete schema.$id; // refs are local; nothing is fetched
  for (const branch of schema.anyOf ?? []) {
    const def = schema.$defs[branch.$ref.replace("#/$defs/", "")];
    def.title = `${def.title}Event`; // so that `Error` does not shadow the global Error
  }
  parts.push(
    await compile(schema, schema.title, {
      bannerComment: "",
      cwd: dir,
      declareExternallyReferenced: true,
      enableConstEnums: false,
      strictIndexSignatures: true,
      unreachableDefinitions: false,
      format: true,
      maxItems: -1,
    }),
  );
}
const text = `${BANNER}\n\n${parts.map((p) => p.trim()).join("\n\n")}\n`;
if (out === "-") process.stdout.write(text);
else await writeFile(out, text, "utf8");
