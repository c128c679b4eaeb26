// A page on another origin than the edge's, in chromium: with its origin in
// SWITCHBOARD_ALLOWED_ORIGINS it reads Server-Sent Events and calls HTTP RPC (the SDK over
// SSE, and plain fetch and EventSource); a page on an origin not listed can do neither
// (docs/protocol.md, section 11: origins and CORS).
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { launchChromium, servePages } from '../helpers/browser.mjs';
import { mintToken, publish, startEdge, uniq } from '../helpers/stack.mjs';

const BUNDLE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'switchboard.min.js');
const PAGE = { body: '<!doctype html><meta charset="utf-8"><title>cross-origin</title><script src="/switchboard.min.js"></script>' };

let allowed;
let other;
let edge;
let browser;

before(async () => {
  allowed = await servePages({ '/': PAGE, '/switchboard.min.js': BUNDLE });
  other = await servePages({ '/': PAGE, '/switchboard.min.js': BUNDLE });
  edge = await startEdge({ env: { SWITCHBOARD_ALLOWED_ORIGINS: allowed.origin } });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await edge?.kill('SIGTERM');
  await allowed?.close();
  await other?.close();
});

async function open(origin) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(`${origin}/`);
  return { page, errors };
}

/**
 * Runs in the page: HTTP RPC with fetch (an `Authorization` header, so the browser sends a
 * preflight), the same call with `?token=` and no custom header (no preflight: the answer
 * itself must carry the CORS header), and an EventSource on `/v1/sse` with `?token=`.
 * Each says what the page could read.
 */
function plainCalls({ base, token, user }) {
  const readable = (promise) =>
    promise.then(
      async (response) => ({ status: response.status, body: await response.json() }),
      (error) => ({ error: error.name }),
    );
  const body = JSON.stringify({ users: [user] });
  const sse = new Promise((resolve) => {
    const source = new EventSource(`${base}/v1/sse?ch=user:${encodeURIComponent(user)}&token=${encodeURIComponent(token)}`);
    const done = (value) => {
      source.close();
      clearTimeout(timer);
      resolve(value);
    };
    const timer = setTimeout(() => done({ error: 'timeout' }), 10_000);
    source.addEventListener('ok', (event) => done({ ok: JSON.parse(event.data) }));
    source.addEventListener('error', () => done({ error: 'error' }));
  });
  return Promise.all([
    readable(fetch(`${base}/v1/rpc/presence.get`, { method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body })),
    readable(fetch(`${base}/v1/rpc/presence.get?token=${encodeURIComponent(token)}`, { method: 'POST', body })),
    sse,
  ]).then(([preflighted, simple, events]) => ({ preflighted, simple, events }));
}

test('a page on an allowed origin uses SSE and HTTP RPC on the edge', async () => {
  const user = uniq('xo');
  const token = mintToken({ sub: user });
  const { page, errors } = await open(allowed.origin);

  const plain = await page.evaluate(plainCalls, { base: edge.httpUrl, token, user });
  assert.equal(plain.preflighted.status, 200, JSON.stringify(plain.preflighted));
  assert.equal(plain.preflighted.body.result.presence[0].user, user);
  assert.equal(plain.simple.status, 200, JSON.stringify(plain.simple));
  assert.equal(plain.events.ok?.ch, `user:${user}`, JSON.stringify(plain.events));

  // The SDK over SSE: a stream read with fetch (Authorization, Last-Event-ID) and RPC over
  // POST /v1/rpc.
  await page.evaluate(
    ({ url, token, ch }) =>
      new Promise((resolve, reject) => {
        window.got = [];
        window.sb = new Switchboard.Switchboard({ url, token, transport: 'sse' });
        window.sb.subscribe(ch, { onSubscribed: resolve, onError: reject }, (event) => window.got.push(event.event.data.n));
        window.sb.connect().catch(reject);
      }),
    { url: edge.wsUrl, token, ch: `user:${user}` },
  );
  await publish(`user:${user}`, 'note.new', { n: 1 });
  await page.waitForFunction(() => window.got.length === 1, null, { timeout: 10_000 });
  const sdk = await page.evaluate(async (who) => {
    const result = await window.sb.rpc('presence.get', { users: [who] });
    const transport = window.sb.transport;
    window.sb.destroy();
    return { transport, users: result.presence.map((p) => p.user), got: window.got };
  }, user);
  assert.deepEqual(sdk, { transport: 'sse', users: [user], got: [1] });
  assert.deepEqual(errors, []);
  await page.close();
});

test('a page on an origin not allowed can read neither', async () => {
  const user = uniq('xo');
  const token = mintToken({ sub: user });
  const { page, errors } = await open(other.origin);
  const plain = await page.evaluate(plainCalls, { base: edge.httpUrl, token, user });
  // fetch rejects with TypeError: the preflight, or the answer, lacks the origin.
  assert.deepEqual(plain, { preflighted: { error: 'TypeError' }, simple: { error: 'TypeError' }, events: { error: 'error' } });

  // The SDK over SSE never gets a stream: it keeps retrying, as after a network error.
  const sdk = await page.evaluate(
    ({ url, token }) =>
      new Promise((resolve) => {
        const sb = new Switchboard.Switchboard({ url, token, transport: 'sse', backoff: { initialMs: 100, maxMs: 200 } });
        const states = [];
        sb.on('state', ({ state }) => states.push(state));
        sb.connect().catch(() => {});
        setTimeout(() => {
          resolve({ state: sb.state, states: [...new Set(states)] });
          sb.destroy();
        }, 1500);
      }),
    { url: edge.wsUrl, token },
  );
  assert.notEqual(sdk.state, 'connected', JSON.stringify(sdk));
  assert.ok(sdk.states.includes('reconnecting') && !sdk.states.includes('connected'), JSON.stringify(sdk));
  assert.deepEqual(errors, []);
  await page.close();

  // The edge itself refuses the origin (403, which the page could not even read); the same
  // call without an Origin header is answered: only the origin differs.
  const response = await fetch(`${edge.httpUrl}/v1/rpc/presence.get`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}` },
    body: JSON.stringify({ users: [user] }),
  });
  assert.equal(response.status, 200);
  const refused = await fetch(`${edge.httpUrl}/v1/rpc/presence.get`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, Origin: other.origin },
    body: JSON.stringify({ users: [user] }),
  });
  assert.equal(refused.status, 403);
  assert.deepEqual(await refused.json(), { code: 'forbidden', message: 'origin not allowed' });
  assert.equal(refused.headers.get('access-control-allow-origin'), null);
});
