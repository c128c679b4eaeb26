// Unit tests: pure helpers, and the client's state machine against a scripted edge.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { Switchboard, SseParser, backoffDelay, memoryStorage, tokenClaims, typeMatches } from '../../dist/index.js';
import { fakeEdge, fakeToken } from '../helpers/fake-edge.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const token = (claims = {}) => fakeToken({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 3600, ...claims });

async function until(check, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function newClient(options) {
  return new Switchboard({ WebSocket, storage: memoryStorage(), backoff: { initialMs: 50, maxMs: 200 }, pingIntervalMs: 0, ...options });
}

test('backoff: full jitter within an exponentially growing, capped ceiling', () => {
  const options = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.equal(backoffDelay(0, options, () => 0.999999), 99);
  assert.equal(backoffDelay(3, options, () => 0.999999), 799);
  assert.equal(backoffDelay(10, options, () => 0.999999), 999);
  assert.equal(backoffDelay(5, options, () => 0), 0);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(2, options);
    assert.ok(d >= 0 && d < 400, `delay ${d} outside [0, 400)`);
  }
});

test('type filters follow the protocol: exact, prefix.* at any depth, *', () => {
  assert.ok(typeMatches('bid.*', 'bid.new'));
  assert.ok(typeMatches('bid.*', 'bid.x.y'));
  assert.ok(!typeMatches('bid.*', 'bid'));
  assert.ok(!typeMatches('bid.*', 'bidding.new'));
  assert.ok(typeMatches('*', 'anything'));
  assert.ok(typeMatches('bid.new', 'bid.new'));
  assert.ok(!typeMatches('bid.new', 'bid.newer'));
});

test('SSE parser: events, ids, multi-line data, comments, CRLF, split chunks', () => {
  const parser = new SseParser();
  const out = [
    ...parser.push(': keep-alive\r\nevent: evt\r\nid: c1\r\ndata: {"a":'),
    ...parser.push('1}\r\n\r\ndata: x\ndata: y\n\nevent: ok\r'),
    ...parser.push('\ndata: z\r\n\r\n'),
  ];
  assert.deepEqual(out, [
    { event: 'evt', data: '{"a":1}', id: 'c1' },
    { event: 'message', data: 'x\ny', id: 'c1' },
    { event: 'ok', data: 'z', id: 'c1' },
  ]);
});

test('token claims are read without verification', () => {
  assert.deepEqual(tokenClaims(fakeToken({ sub: 'u9', exp: 5 })), { sub: 'u9', exp: 5 });
  assert.equal(tokenClaims('garbage'), undefined);
});

test('bye unauthorized: disconnected, no reconnect until a new token is set', async (t) => {
  let hellos = 0;
  const edge = await fakeEdge({
    hello: (frame, { send, socket }) => {
      hellos++;
      if (frame.token.includes('good') || tokenClaims(frame.token)?.sub === 'good') {
        send({ op: 'welcome', user: 'good', session: 's', heartbeat_ms: 25000 });
        return;
      }
      send({ op: 'err', code: 'unauthorized', message: 'token signature is invalid' });
      send({ op: 'bye', code: 'unauthorized', reconnect: false });
      socket.close(4401, 'unauthorized');
    },
  });
  t.after(() => edge.close());
  const states = [];
  const sb = newClient({ url: edge.url, token: token({ sub: 'bad' }) });
  t.after(() => sb.destroy());
  sb.on('state', (s) => states.push(`${s.state}:${s.reason}`));
  await assert.rejects(sb.connect(), /unauthorized/);
  await sleep(500);
  assert.equal(hellos, 1, 'the client must not retry a refused token');
  assert.deepEqual(states, ['connecting:connect', 'disconnected:bye:unauthorized']);
  sb.setToken(token({ sub: 'good' }));
  await until(() => sb.state === 'connected', 'connected with the new token');
  assert.equal(hellos, 2);
});

test('reconnect resumes each channel from its last seq and drops duplicates', async (t) => {
  const subs = [];
  const edge = await fakeEdge({
    sub: (frame, { send, conn }) => {
      subs.push({ conn, since: frame.since });
      send({ op: 'ok', id: frame.id, ch: frame.ch, seq: 10, epoch: 'e1', recovered: true });
      if (conn === 1) {
        for (const seq of [11, 12]) send({ op: 'evt', ch: frame.ch, seq, event: { id: `evt_${seq}`, type: 'bid.new', timestamp: '', data: { seq } } });
      } else {
        // A replay that overlaps what was delivered, and a re-published event id.
        for (const [seq, id] of [[12, 'evt_12'], [13, 'evt_13'], [14, 'evt_13']]) {
          send({ op: 'evt', ch: frame.ch, seq, event: { id, type: 'bid.new', timestamp: '', data: { seq } } });
        }
      }
    },
  });
  t.after(() => edge.close());
  const sb = newClient({ url: edge.url, token: token() });
  t.after(() => sb.destroy());
  const got = [];
  sb.subscribe('project:p1', { types: ['bid.*'] }, (e) => got.push(e.seq));
  await sb.connect();
  await until(() => got.length === 2, 'two events');
  for (const socket of edge.sockets) socket.terminate();
  await until(() => got.length === 3 && sb.state === 'connected', 'the replay after reconnecting');
  await sleep(100);
  assert.deepEqual(got, [11, 12, 13]);
  assert.equal(sb.stats.duplicatesDropped, 2);
  assert.equal(subs[0].since, undefined);
  assert.deepEqual(subs[1].since, { seq: 12, epoch: 'e1' });
});

test('recovered:false and a new epoch reach onGap', async (t) => {
  let n = 0;
  const edge = await fakeEdge({
    sub: (frame, { send }) => {
      n++;
      const epoch = n === 3 ? 'e2' : 'e1';
      send({ op: 'ok', id: frame.id, ch: frame.ch, seq: 20, epoch, recovered: n === 1 });
      if (n === 1) send({ op: 'evt', ch: frame.ch, seq: 21, event: { id: 'evt_21', type: 'x', timestamp: '', data: null } });
    },
  });
  t.after(() => edge.close());
  const sb = newClient({ url: edge.url, token: token() });
  t.after(() => sb.destroy());
  const gaps = [];
  sb.subscribe('project:p1', { onGap: (g) => gaps.push(g.reason) }, () => undefined);
  await sb.connect();
  await until(() => sb.position('project:p1')?.seq === 21, 'the first event');
  for (const socket of edge.sockets) socket.terminate();
  await until(() => gaps.length === 1, 'not_recovered');
  for (const socket of edge.sockets) socket.terminate();
  await until(() => gaps.length === 2, 'epoch_changed');
  assert.deepEqual(gaps, ['not_recovered', 'epoch_changed']);
  assert.deepEqual(sb.position('project:p1'), { seq: 20, epoch: 'e2' });
});

test('draining: reconnects at once, to the next edge', async (t) => {
  const a = await fakeEdge({
    hello: (frame, { send, socket }) => {
      send({ op: 'welcome', user: 'u1', session: 'a', heartbeat_ms: 25000 });
      setTimeout(() => {
        send({ op: 'bye', code: 'draining', reconnect: true });
        socket.close(4410, 'draining');
      }, 50);
    },
  });
  const b = await fakeEdge();
  t.after(() => Promise.all([a.close(), b.close()]));
  const sb = newClient({ url: [a.url, b.url], token: token(), backoff: { initialMs: 5000, maxMs: 5000 } });
  t.after(() => sb.destroy());
  const states = [];
  sb.on('state', (s) => states.push(s));
  await sb.connect();
  const started = Date.now();
  await until(() => b.connections === 1 && sb.state === 'connected', 'connected to the second edge');
  assert.ok(Date.now() - started < 2000, 'a drained client must not wait for the backoff');
  const reconnecting = states.find((s) => s.state === 'reconnecting');
  assert.equal(reconnecting.reason, 'bye:draining');
  assert.equal(reconnecting.delayMs, 0);
});

test('the token is refreshed in band before it expires', async (t) => {
  const edge = await fakeEdge();
  t.after(() => edge.close());
  let calls = 0;
  const sb = newClient({
    url: edge.url,
    refreshLeadMs: 60_000,
    token: ({ reason }) => {
      calls++;
      return token({ exp: Math.floor(Date.now() / 1000) + 2, n: calls, reason });
    },
  });
  t.after(() => sb.destroy());
  await sb.connect();
  await until(() => edge.frames.some((f) => f.op === 'refresh'), 'a refresh frame', 3000);
  const refresh = edge.frames.find((f) => f.op === 'refresh');
  assert.equal(tokenClaims(refresh.token).reason, 'refresh');
  assert.equal(edge.connections, 1, 'refreshing must not reconnect');
});

test('the offline queue survives a restart and is sent once, with the same key', async (t) => {
  const storage = memoryStorage();
  const offline = newClient({ url: 'ws://127.0.0.1:9/v1/ws', token: token(), storage, storageKey: 'app' });
  const message = offline.publish('conversation:c1', 'message.new', { text: 'hi' });
  assert.equal(message.status, 'sending');
  offline.destroy();
  assert.match(storage.getItem('app:outbox'), /"text":"hi"/);

  const edge = await fakeEdge({
    pub: (frame, { send }) => send({ op: 'ok', id: frame.id, seq: 7, event_id: 'evt_7' }),
  });
  t.after(() => edge.close());
  const online = newClient({ url: edge.url, token: token(), storage, storageKey: 'app' });
  t.after(() => online.destroy());
  const [restored] = await online.pendingMessages();
  assert.equal(restored.key, message.key);
  assert.ok(restored.restored);
  const statuses = [];
  restored.on('status', (s) => statuses.push(s));
  await online.connect();
  await restored.sent();
  assert.deepEqual(statuses, ['sent']);
  assert.equal(restored.seq, 7);
  const pubs = edge.frames.filter((f) => f.op === 'pub');
  assert.equal(pubs.length, 1);
  assert.equal(pubs[0].key, message.key);
  assert.equal(storage.getItem('app:outbox'), null);
});

test('a trace context travels with publish and rpc, and survives the offline queue', async (t) => {
  const trace = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  const storage = memoryStorage();
  const offline = newClient({ url: 'ws://127.0.0.1:9/v1/ws', token: token(), storage, storageKey: 'tr' });
  offline.publish('conversation:c1', 'message.new', { text: 'traced' }, { trace });
  offline.destroy();
  const edge = await fakeEdge({
    pub: (frame, { send }) => send({ op: 'ok', id: frame.id, seq: 3, event_id: 'evt_3' }),
    rpc: (frame, { send }) => send({ op: 'ok', id: frame.id, result: { ok: true } }),
  });
  t.after(() => edge.close());
  const sb = newClient({ url: edge.url, token: token(), storage, storageKey: 'tr' });
  t.after(() => sb.destroy());
  const [restored] = await sb.pendingMessages();
  await sb.connect();
  await restored.sent();
  assert.deepEqual(await sb.rpc('test.trace', {}, { trace }), { ok: true });
  await sb.rpc('test.plain');
  const pub = edge.frames.find((f) => f.op === 'pub');
  const rpcs = edge.frames.filter((f) => f.op === 'rpc');
  assert.equal(pub.trace, trace, 'restored from storage with its trace');
  assert.equal(rpcs[0].trace, trace);
  assert.equal('trace' in rpcs[1], false, 'no trace unless given');
  assert.throws(() => sb.publish('conversation:c1', 'message.new', {}, { trace: 'nope' }), /W3C traceparent/);
  await assert.rejects(sb.rpc('test.trace', {}, { trace: 'NOPE' }), /W3C traceparent/);
});

test('a refused publish fails; a retry reuses the key', async (t) => {
  let n = 0;
  const edge = await fakeEdge({
    pub: (frame, { send }) => {
      n++;
      if (n === 1) send({ op: 'err', id: frame.id, code: 'forbidden', message: 'not a participant' });
      else send({ op: 'ok', id: frame.id, seq: 3, event_id: 'evt_3' });
    },
  });
  t.after(() => edge.close());
  const sb = newClient({ url: edge.url, token: token() });
  t.after(() => sb.destroy());
  await sb.connect();
  const message = sb.publish('conversation:c1', 'message.new', { text: 'x' });
  await assert.rejects(message.sent(), /not a participant/);
  assert.equal(message.status, 'failed');
  assert.equal(message.error.code, 'forbidden');
  message.retry();
  await message.sent();
  const keys = edge.frames.filter((f) => f.op === 'pub').map((f) => f.key);
  assert.equal(keys.length, 2);
  assert.equal(keys[0], keys[1]);
});

test('typing: throttled while typing, stopped after a pause; others expire', async (t) => {
  const edge = await fakeEdge({
    sub: (frame, { send }) => {
      send({ op: 'ok', id: frame.id, ch: frame.ch, seq: 0, epoch: 'e1', recovered: true });
      send({ op: 'sig', ch: frame.ch, from: 'u2', type: 'typing', data: { typing: true } });
    },
  });
  t.after(() => edge.close());
  const sb = newClient({ url: edge.url, token: token() });
  t.after(() => sb.destroy());
  sb.subscribe('conversation:c1', () => undefined);
  await sb.connect();
  const typing = sb.typing('conversation:c1', { throttleMs: 200, idleMs: 150, expireMs: 300 });
  const seen = [];
  typing.onChange((users) => seen.push(users.join(',')));
  await until(() => seen.includes('u2'), 'u2 typing');
  await until(() => seen.at(-1) === '', 'u2 expired', 2000);
  for (let i = 0; i < 5; i++) {
    typing.keystroke();
    await sleep(20);
  }
  await sleep(300);
  const sigs = edge.frames.filter((f) => f.op === 'sig').map((f) => f.data.typing);
  assert.deepEqual(sigs, [true, false]);
});

test('automatic away: in the background with no input for idleAfterMs, away; activity, online again; busy is left alone', async (t) => {
  const edge = await fakeEdge();
  t.after(() => edge.close());
  const sb = newClient({ url: edge.url, token: token(), idleAfterMs: 150 });
  t.after(() => sb.destroy());
  await sb.connect();
  const statuses = () => edge.frames.filter((f) => f.op === 'presence').map((f) => f.status);
  sb.setAppState('background');
  await sleep(80);
  sb.reportActivity(); // input while in the background starts the countdown again
  await sleep(100);
  assert.deepEqual(statuses(), []);
  await until(() => statuses().length === 1, 'away');
  assert.equal(sb.presence.status, 'away');
  sb.setAppState('active');
  await until(() => statuses().length === 2, 'online again');
  assert.deepEqual(statuses(), ['away', 'online']);
  await sb.presence.setStatus('busy');
  sb.setAppState('background');
  await sleep(300);
  assert.deepEqual(statuses(), ['away', 'online', 'busy'], 'a chosen busy is not replaced by away');
  assert.throws(() => sb.setAppState('asleep'), /"background" or "active"/);
  assert.throws(() => newClient({ url: edge.url, token: token(), idleAfterMs: -1 }), /idleAfterMs must be a number/);
});

test('bad arguments are clear errors', async () => {
  assert.throws(() => newClient({ url: 'http://x/v1/ws', token: 't' }), /not a WebSocket URL/);
  assert.throws(() => newClient({ url: [], token: 't' }), /at least one url/);
  assert.throws(() => newClient({ url: 'ws://x/v1/ws', token: 5 }), /token must be a JWT string or a function/);
  assert.throws(() => newClient({ url: 'ws://x/v1/ws', token: 't', random: 3 }), /random must be a function/);
  const sb = newClient({ url: 'ws://127.0.0.1:9/v1/ws', token: 't' });
  assert.throws(() => sb.subscribe('', () => undefined), /channel name/);
  assert.throws(() => sb.subscribe('project:p1', { types: 'bid.*' }, () => undefined), /types must be an array/);
  assert.throws(() => sb.publish('conversation:c1', '', {}), /event type/);
  assert.throws(() => sb.ack('conversation:c1', -1), /non-negative integer/);
  assert.throws(() => sb.signal('conversation:c1', ''), /channel and a type/);
  await assert.rejects(sb.rpc('not a method'), /is not a method name/);
  await assert.rejects(sb.presence.setStatus('sleeping'), /presence status must be one of/);
  await assert.rejects(sb.presence.setPrivacy('friends'), /presence privacy must be one of/);
  assert.throws(() => sb.presence.watch(''), /needs a user id/);
  await assert.rejects(async () => sb.notifications.list({ limit: 0 }), /limit must be a positive integer/);
  assert.throws(() => sb.inbox.mute('project:p1'), /conversation channel/);
  sb.destroy();
});

test('injected randomness drives idempotency keys and backoff', async () => {
  let calls = 0;
  const sb = newClient({ url: 'ws://127.0.0.1:9/v1/ws', token: token(), random: () => (calls++, 0.5) });
  const message = sb.publish('conversation:c1', 'message.new', { text: 'x' });
  assert.equal(message.key, 'k-' + '80'.repeat(12));
  assert.ok(calls >= 12);
  sb.destroy();
});
