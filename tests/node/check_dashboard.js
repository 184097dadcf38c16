// Type-checks a Grafana dashboard JSON against Grafana's own published dashboard model
// (@grafana/schema's `Dashboard`), with the TypeScript compiler: the JSON becomes an object
// literal typed `Dashboard`, so a wrong type, a missing required field or an unknown key
// (excess property check) is an error.
//
// Usage: node check_dashboard.js DASHBOARD.json   (exit 0 and "dashboard OK", or the errors)
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const ts = require("typescript");

const file = process.argv[2];
const json = fs.readFileSync(file, "utf8");
JSON.parse(json); // a syntax error names itself here
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dashboard-"));
const source = path.join(dir, "dashboard.ts");
fs.writeFileSync(
  source,
  "import type { Dashboard } from " +
    JSON.stringify(path.join(__dirname, "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen")) +
    ";\n" +
    "export const dashboard: Dashboard = " + json + ";\n"
);
const program = ts.createProgram([source], {
  strict: true,
  noEmit: true,
  module: ts.ModuleKind.Node16,
  moduleResolution: ts.ModuleResolutionKind.Node16,
  target: ts.ScriptTarget.ES2020,
  typeRoots: [],
});
const diagnostics = ts.getPreEmitDiagnostics(program);
fs.rmSync(dir, { recursive: true, force: true });
if (diagnostics.length > 0) {
  for (const d of diagnostics) {
    const where = d.file && d.start !== undefined
      ? d.file.getLineAndCharacterOfPosition(d.start) : null;
    console.error(
      (where ? `${file} (as TypeScript) line ${where.line}: ` : "") +
        ts.flattenDiagnosticMessageText(d.messageText, "\n")
    );
  }
  process.exit(1);
}
console.log("dashboard OK");
