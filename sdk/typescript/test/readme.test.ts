// The README's example runs as written against the real service.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

// build/test/ -> the package directory.
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("the README example runs as written", () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.equal(blocks.length, 1, "the README has one example");
  // Inside the package, so "@dvt/client" resolves to the package itself (self-reference).
  const dir = join(root, "build", "readme");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "example.ts"), blocks[0]);
  execFileSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"),
    "--strict", "--target", "ES2022", "--module", "NodeNext", "--moduleResolution", "NodeNext",
    "--types", "node", "--skipLibCheck", "--rootDir", dir, "--outDir", dir, join(dir, "example.ts")],
  { cwd: root, stdio: "inherit" });
  const out = execFileSync(process.execPath, [join(dir, "example.js")],
    { cwd: root, encoding: "utf8", timeout: 120_000 });
  const lines = out.trim().split("\n");
  assert.equal(lines.at(-1), "COMPLETED");
  const events = lines.slice(0, -1).map((l) => l.split(" "));
  assert.deepEqual(events.map((e) => Number(e[0])), events.map((_, i) => i + 1));
  const types = events.map((e) => e[1]);
  const at = (t: string): number => types.indexOf(t);
  for (const t of ["StepAwaitingApproval", "RunPaused", "RunResumed", "RunCompleted"]) {
    assert.ok(types.includes(t), types.join(","));
  }
  assert.ok(at("StepAwaitingApproval") < at("RunPaused") && at("RunPaused") < at("RunResumed") &&
    at("RunResumed") < at("RunCompleted"));
  assert.equal(types.filter((t) => t === "RunPaused").length, 1);
});
