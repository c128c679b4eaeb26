// The published package as a user gets it: `npm pack` (which builds on prepack), the file
// list, and the tarball installed into an empty project and used through `require`,
// `import` and a <script> tag in chromium, each connecting to the real stack.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { launchChromium, servePages } from '../helpers/browser.mjs';
import { mintToken, stack, uniq } from '../helpers/stack.mjs';

const run = promisify(execFile);
/** `npm pack --json` output, after whatever the prepack build printed. */
const packJson = (stdout) => JSON.parse(stdout.slice(stdout.search(/^\[/m)));
const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const WS = join(PACKAGE, 'node_modules', 'ws', 'index.js');
const { wsUrl } = stack();
const work = mkdtempSync(join(tmpdir(), 'switchboard-pack-'));
const app = join(work, 'app');
let tarball;

before(async () => {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: PACKAGE, maxBuffer: 1 << 24 });
  tarball = join(work, packJson(stdout)[0].filename);
  await run('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'empty-app', version: '1.0.0', private: true }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', tarball], { cwd: app });
});
after(() => rmSync(work, { recursive: true, force: true }));

test('npm pack --dry-run lists only what a user needs', async () => {
  const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: PACKAGE, maxBuffer: 1 << 24 });
  const files = packJson(stdout)[0].files.map((f) => f.path).sort();
  for (const needed of ['LICENSE', 'README.md', 'package.json', 'dist/index.js', 'dist/index.cjs', 'dist/index.d.ts', 'dist/switchboard.min.js', 'dist/switchboard-sw.js', 'dist/types.d.ts']) {
    assert.ok(files.includes(needed), `${needed} is missing from the package: ${files.join(', ')}`);
  }
  const extra = files.filter((f) => !/^(LICENSE|README\.md|package\.json|dist\/[a-z]+\.(js|cjs|d\.ts)|dist\/switchboard\.min\.js|dist\/switchboard-sw\.js)$/.test(f));
  assert.deepEqual(extra, [], 'the package carries files a user does not need');
});

/** A script for the empty project that connects as `user` and prints what it saw. */
function nodeScript(kind) {
  const load =
    kind === 'cjs'
      ? `const { Switchboard, memoryStorage, SwitchboardError } = require('@switchboard/client');\nconst WebSocket = require(${JSON.stringify(WS)});`
      : `import { Switchboard, memoryStorage, SwitchboardError } from '@switchboard/client';\nimport WebSocket from ${JSON.stringify(WS)};`;
  return `${load}
const sb = new Switchboard({ url: process.env.URL, token: process.env.TOKEN, WebSocket, storage: memoryStorage() });
const timer = setTimeout(() => { console.error('timed out'); process.exit(2); }, 15000);
sb.connect().then(async () => {
  const rtt = await sb.ping();
  const errorClass = typeof SwitchboardError === 'function';
  console.log(JSON.stringify({ user: sb.user, state: sb.state, rtt: typeof rtt, errorClass }));
  sb.destroy();
  clearTimeout(timer);
}, (error) => { console.error(error); process.exit(1); });
`;
}

for (const kind of ['cjs', 'mjs']) {
  test(`the installed tarball works through ${kind === 'cjs' ? 'require' : 'import'}`, async () => {
    const user = uniq('pkg');
    const file = join(app, `use.${kind}`);
    writeFileSync(file, nodeScript(kind));
    const { stdout } = await run(process.execPath, [file], { cwd: app, env: { ...process.env, URL: wsUrl, TOKEN: mintToken({ sub: user }) } });
    assert.deepEqual(JSON.parse(stdout), { user, state: 'connected', rtt: 'number', errorClass: true });
  });
}

test('the browser bundle works from a <script> tag in chromium (global Switchboard)', async (t) => {
  const user = uniq('pkgweb');
  const page = `<!doctype html><meta charset="utf-8"><title>bundle</title>
<script src="/switchboard.min.js"></script>
<script>
  window.result = (async () => {
    const sb = new Switchboard.Switchboard({ url: ${JSON.stringify(wsUrl)}, token: ${JSON.stringify(mintToken({ sub: user }))} });
    await sb.connect();
    const rtt = await sb.ping();
    return { user: sb.user, transport: sb.transport, rtt: typeof rtt, exports: Object.keys(Switchboard).includes('SwitchboardError') };
  })();
</script>`;
  const server = await servePages({
    '/': { body: page },
    '/switchboard.min.js': join(app, 'node_modules', '@switchboard', 'client', 'dist', 'switchboard.min.js'),
  });
  t.after(() => server.close());
  const browser = await launchChromium();
  t.after(() => browser.close());
  const tab = await browser.newPage();
  const errors = [];
  tab.on('pageerror', (error) => errors.push(error.message));
  await tab.goto(`${server.origin}/`);
  const result = await tab.evaluate(() => window.result);
  assert.deepEqual(result, { user, transport: 'websocket', rtt: 'number', exports: true });
  assert.deepEqual(errors, []);
});
