// Unit tests of sb.inbox, sb.search and sb.push against the scripted edge: the inbox's
// kept state (first page, live signals, mutes, the page read again on every reconnect,
// removals), search's arguments, and push.enable/disable's steps with the browser's
// objects (service worker container, PushManager, Notification) played by the test.
// The same features against the real stack are in test/integration.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { Switchboard, memoryStorage } from '../../dist/index.js';
import { fakeEdge, fakeToken } from '../helpers/fake-edge.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const token = () => fakeToken({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 3600 });

async function until(check, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function newClient(edge, options = {}) {
  return new Switchboard({ url: edge.url, token: token(), WebSocket, storage: memoryStorage(), backoff: { initialMs: 50, maxMs: 200 }, pingIntervalMs: 0, ...options });
}

const entry = (ch, unread, updatedAt, extra = {}) => ({
  ch,
  unread,
  read: 0,
  last: { seq: 10, id: `evt_${ch}`, type: 'message.new', actor: { id: 'u2' }, text: `hi in ${ch}`, timestamp: updatedAt },
  muted: false,
  updatedAt,
  ...extra,
});

/** A scripted edge whose inbox.list answers from `server` (mutable by the test). */
async function inboxEdge(server, extraRpc = {}) {
  const lists = [];
  const edge = await fakeEdge({
    rpc: (frame, { send, conn }) => {
      if (frame.method === 'inbox.list') {
        lists.push({ conn, params: frame.params });
        send({ op: 'ok', id: frame.id, result: { conversations: server.conversations, unread: server.unread, next: server.next ?? null } });
      } else if (extraRpc[frame.method]) {
        extraRpc[frame.method](frame, send);
      } else {
        send({ op: 'err', id: frame.id, code: 'not_found', message: `no service answers ${frame.method}` });
      }
    },
  });
  edge.lists = lists;
  edge.signal = (data, ch = 'user:u1') => {
    for (const socket of edge.sockets) socket.send(JSON.stringify({ op: 'sig', ch, from: 'switchboard', type: 'inbox', data }));
  };
  return edge;
}

test('inbox: watch subscribes to user:<me> for inbox signals, reads the first page and keeps it current', async (t) => {
  const server = {
    conversations: [entry('conversation:c2', 2, '2026-12-05T10:00:02Z'), entry('conversation:c1', 1, '2026-12-05T10:00:01Z')],
    unread: 3,
  };
  const edge = await inboxEdge(server);
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  const states = [];
  const updates = [];
  sb.inbox.on('update', (u) => updates.push(u));
  const stop = sb.inbox.watch((state) => states.push(state), { limit: 20 });
  assert.equal(states[0].ready, false, 'the listener gets the (empty) state at once');
  await sb.connect();
  await until(() => sb.inbox.state.ready, 'the first page');

  const sub = edge.frames.find((f) => f.op === 'sub');
  assert.equal(sub.ch, 'user:u1');
  assert.deepEqual(sub.types, ['inbox'], 'only the signals: no stored event has the type inbox');
  assert.deepEqual(edge.lists[0].params, { limit: 20 });
  let state = sb.inbox.state;
  assert.deepEqual(state.conversations.map((e) => e.ch), ['conversation:c2', 'conversation:c1']);
  assert.equal(state.total, 3);
  assert.equal(state.entries.get('conversation:c1').unread, 1);

  // A new message in c1: it moves to the top with the signal's total.
  edge.signal({ ...entry('conversation:c1', 2, '2026-12-05T10:00:03Z'), total: 4 });
  await until(() => sb.inbox.state.total === 4, 'the signal applied');
  state = sb.inbox.state;
  assert.deepEqual(state.conversations.map((e) => e.ch), ['conversation:c1', 'conversation:c2']);
  assert.equal(state.entries.get('conversation:c1').unread, 2);
  assert.equal(updates.length, 1);

  // A read on another device: same place, fewer unread.
  edge.signal({ ...entry('conversation:c2', 0, '2026-12-05T10:00:02Z', { read: 10 }), total: 2 });
  await until(() => sb.inbox.state.total === 2, 'the read applied');
  assert.deepEqual(sb.inbox.state.conversations.map((e) => e.ch), ['conversation:c1', 'conversation:c2']);
  assert.equal(sb.inbox.state.entries.get('conversation:c2').read, 10);

  // Leaving a conversation removes it.
  edge.signal({ ch: 'conversation:c2', removed: true, total: 2 });
  await until(() => !sb.inbox.state.entries.has('conversation:c2'), 'the removal');
  assert.deepEqual(sb.inbox.state.conversations.map((e) => e.ch), ['conversation:c1']);

  // Signals that are not the inbox's are ignored: another type, another channel, bad data.
  const before = states.length;
  edge.signal({ ...entry('conversation:c9', 9, '2026-12-05T11:00:00Z'), total: 99 }, 'user:u1:notifications');
  edge.signal({ nonsense: true });
  edge.signal({ ch: 'conversation:c9', total: 'many' });
  for (const socket of edge.sockets) socket.send(JSON.stringify({ op: 'sig', ch: 'user:u1', from: 'u2', type: 'typing', data: { ch: 'x', total: 1 } }));
  await sb.ping();
  assert.equal(states.length, before, 'nothing changed');
  assert.equal(sb.inbox.state.total, 2);

  stop();
  await until(() => edge.frames.some((f) => f.op === 'unsub' && f.ch === 'user:u1'), 'the unsub of user:u1');
  assert.equal(sb.inbox.state.ready, false, 'a stopped inbox forgets');
});

test('inbox: after a reconnect the first page is read again (signals are not stored)', async (t) => {
  const server = { conversations: [entry('conversation:c1', 1, '2026-12-05T10:00:01Z')], unread: 1 };
  const edge = await inboxEdge(server);
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  sb.inbox.watch(() => undefined);
  await sb.connect();
  await until(() => sb.inbox.state.ready, 'the first page');
  assert.equal(edge.lists.length, 1);

  // While this device was away, c1 got two messages and c3 started: no signal reached it.
  server.conversations = [entry('conversation:c3', 1, '2026-12-05T10:00:05Z'), entry('conversation:c1', 3, '2026-12-05T10:00:04Z')];
  server.unread = 4;
  for (const socket of edge.sockets) socket.terminate();
  await until(() => edge.lists.length === 2 && sb.inbox.state.total === 4, 'the page read again on the new connection');
  assert.equal(edge.lists[1].conn, 2);
  assert.deepEqual(sb.inbox.state.conversations.map((e) => [e.ch, e.unread]), [['conversation:c3', 1], ['conversation:c1', 3]]);
  assert.equal(edge.frames.filter((f) => f.op === 'sub' && f.ch === 'user:u1').length, 2, 'subscribed again for the signals');
});

test('inbox: a page read while a signal arrived is read again; after two re-reads the signals go on top', async (t) => {
  let calls = 0;
  let signalEach = 1;
  const edge = await fakeEdge({
    rpc: (frame, { send, socket }) => {
      const n = ++calls;
      // The signal reaches the client before the page it may be newer than.
      if (n <= signalEach) {
        const data = { ...entry('conversation:c1', 10 + n, '2026-12-05T10:00:09Z'), total: 10 + n };
        socket.send(JSON.stringify({ op: 'sig', ch: 'user:u1', from: 'switchboard', type: 'inbox', data }));
      }
      send({ op: 'ok', id: frame.id, result: { conversations: [entry('conversation:c1', n, '2026-12-05T10:00:01Z')], unread: n, next: null } });
    },
  });
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  sb.inbox.watch(() => undefined);
  await sb.connect();
  await until(() => sb.inbox.state.ready, 'the first page');
  assert.equal(calls, 2, 'read again once');
  assert.equal(sb.inbox.state.total, 2, 'the second page, with no signal during it, stands');

  // Signals during every read: after two re-reads the last page is applied, then those signals.
  signalEach = Infinity;
  calls = 0;
  await sb.inbox.refresh();
  assert.equal(calls, 3);
  assert.equal(sb.inbox.state.total, 13);
  assert.equal(sb.inbox.state.entries.get('conversation:c1').unread, 13);
});

test('inbox: a watcher added while user:<me> is already subscribed still reads the first page', async (t) => {
  const server = { conversations: [entry('conversation:c1', 5, '2026-12-05T10:00:01Z')], unread: 5 };
  const edge = await inboxEdge(server);
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  let subscribed = false;
  sb.subscribe('user:u1', { onSubscribed: () => (subscribed = true) }, () => undefined);
  await sb.connect();
  await until(() => subscribed, 'the app subscription');
  sb.inbox.watch(() => undefined);
  await until(() => sb.inbox.state.ready, 'the first page');
  assert.equal(sb.inbox.state.total, 5);
  assert.equal(edge.frames.filter((f) => f.op === 'sub').length, 1, 'the subscription of every type already carries the signals');
});

test('inbox: mute applies the entry and the total of the answer (or adjusts it when there is none)', async (t) => {
  const server = {
    conversations: [entry('conversation:c1', 2, '2026-12-05T10:00:02Z'), entry('conversation:c2', 3, '2026-12-05T10:00:01Z')],
    unread: 5,
  };
  const mutes = [];
  const edge = await inboxEdge(server, {
    'inbox.mute': (frame, send) => {
      mutes.push(frame.params);
      // The unmute answer carries the server's total (as docs/protocol.md §10.11 says); the mute answer, as an older server's, none.
      const total = frame.params.muted ? {} : { total: 42 };
      send({ op: 'ok', id: frame.id, result: { ...entry(frame.params.ch, 3, '2026-12-05T10:00:01Z'), muted: frame.params.muted, ...total } });
    },
  });
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  sb.inbox.watch(() => undefined);
  await sb.connect();
  await until(() => sb.inbox.state.ready, 'the first page');
  const muted = await sb.inbox.mute('conversation:c2', true);
  assert.equal(muted.muted, true);
  assert.deepEqual(mutes, [{ ch: 'conversation:c2', muted: true }]);
  assert.equal(sb.inbox.state.total, 2, 'a muted conversation leaves the total');
  assert.equal(sb.inbox.state.entries.get('conversation:c2').unread, 3, 'and keeps its own unread');
  assert.deepEqual(sb.inbox.state.conversations.map((e) => e.ch), ['conversation:c1', 'conversation:c2'], 'a mute keeps the place');
  const unmuted = await sb.inbox.mute('conversation:c2', false);
  assert.equal(sb.inbox.state.total, 42, "the answer's total wins");
  assert.equal('total' in unmuted, false, 'the entry resolved is the entry alone');
  assert.equal('total' in sb.inbox.state.entries.get('conversation:c2'), false);

  assert.throws(() => sb.inbox.mute('project:p1'), /conversation channel/);
  assert.throws(() => sb.inbox.mute('conversation:c1', 'yes'), /muted must be true or false/);
});

test('inbox: loadMore pages with the cursor; list checks its arguments', async (t) => {
  const server = { conversations: [entry('conversation:c2', 1, '2026-12-05T10:00:02Z')], unread: 2, next: 'cur-1' };
  const edge = await inboxEdge(server);
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  sb.inbox.watch(() => undefined, { limit: 1 });
  await sb.connect();
  await until(() => sb.inbox.state.ready, 'the first page');
  assert.equal(sb.inbox.state.hasMore, true);
  // An edit in a conversation older than every loaded one waits for its page.
  edge.signal({ ...entry('conversation:c0', 0, '2026-12-05T09:00:00Z'), total: 2 });
  await sb.ping();
  assert.equal(sb.inbox.state.entries.has('conversation:c0'), false);
  server.conversations = [entry('conversation:c1', 1, '2026-12-05T10:00:01Z')];
  server.next = null;
  await sb.inbox.loadMore();
  assert.deepEqual(edge.lists[1].params, { before: 'cur-1' });
  assert.deepEqual(sb.inbox.state.conversations.map((e) => e.ch), ['conversation:c2', 'conversation:c1']);
  assert.equal(sb.inbox.state.hasMore, false);

  await assert.rejects(sb.inbox.list({ limit: 0 }), /limit must be a positive integer/);
  await assert.rejects(sb.inbox.list({ before: 7 }), /before must be the next cursor/);
  assert.throws(() => sb.inbox.watch(() => undefined, { limit: -1 }), /limit must be a positive integer/);
  assert.throws(() => sb.inbox.watch(), /needs a listener/);
});

test('inbox: a refused inbox.list is an error event and the state stays as it was', async (t) => {
  const edge = await fakeEdge({
    rpc: (frame, { send }) => send({ op: 'err', id: frame.id, code: 'not_found', message: 'no service answers inbox.list' }),
  });
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  const errors = [];
  sb.inbox.on('error', (e) => errors.push(e));
  sb.inbox.watch(() => undefined);
  await sb.connect();
  await until(() => errors.length === 1, 'the error');
  assert.equal(errors[0].code, 'not_found');
  assert.equal(sb.inbox.state.ready, false);
});

test('search: messages.search with q, ch, limit and before; bad arguments are clear errors', async (t) => {
  const calls = [];
  const edge = await fakeEdge({
    rpc: (frame, { send }) => {
      calls.push(frame);
      send({
        op: 'ok',
        id: frame.id,
        result: { results: [{ ch: 'conversation:c1', seq: 4, event: { id: 'evt_4', type: 'message.new', timestamp: '2026-12-05T10:00:00Z', data: { text: 'banana bread' } }, snippet: '<b>banana</b> bread' }], next: null },
      });
    },
  });
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  await sb.connect();
  const page = await sb.search('banana', { ch: 'conversation:c1', limit: 5, before: 'cur' });
  assert.equal(calls[0].method, 'messages.search');
  assert.deepEqual(calls[0].params, { q: 'banana', ch: 'conversation:c1', limit: 5, before: 'cur' });
  assert.equal(page.results[0].event.data.text, 'banana bread');
  await sb.search('"quoted" OR -not & |');
  assert.deepEqual(calls[1].params, { q: '"quoted" OR -not & |' }, 'any text is sent as it is');

  await assert.rejects(sb.search(''), /some text/);
  await assert.rejects(sb.search('   '), /some text/);
  await assert.rejects(sb.search(42), /some text/);
  await assert.rejects(sb.search('x', { ch: 'nocolon' }), /ch must be a channel/);
  await assert.rejects(sb.search('x', { limit: 1.5 }), /limit must be a positive integer/);
  await assert.rejects(sb.search('x', { before: '' }), /before must be the next cursor/);
  assert.equal(calls.length, 2, 'nothing bad was sent');
});

// --- push ------------------------------------------------------------------------------------

/** The browser's service worker container, PushManager and Notification, as a test plays them. */
function fakeBrowser({ permission = 'default', answer = 'granted', existingKey } = {}) {
  const log = [];
  let subscription = null;
  const makeSubscription = (key) => ({
    endpoint: 'https://fcm.googleapis.com/fcm/send/abc',
    options: { applicationServerKey: key.buffer.slice(key.byteOffset, key.byteOffset + key.byteLength) },
    toJSON: () => ({ endpoint: 'https://fcm.googleapis.com/fcm/send/abc', expirationTime: null, keys: { p256dh: 'BPk', auth: 'au' } }),
    unsubscribe: async () => {
      log.push('unsubscribe');
      subscription = null;
      return true;
    },
  });
  if (existingKey) subscription = makeSubscription(existingKey);
  const listeners = new Set();
  const worker = {
    state: 'installing',
    addEventListener: (_type, l) => listeners.add(l),
    removeEventListener: (_type, l) => listeners.delete(l),
  };
  const registration = {
    scope: 'http://app.test/sw/',
    active: null,
    installing: worker,
    waiting: null,
    pushManager: {
      getSubscription: async () => subscription,
      subscribe: async (options) => {
        log.push(['subscribe', options.userVisibleOnly, options.applicationServerKey.length]);
        subscription = makeSubscription(options.applicationServerKey);
        return subscription;
      },
    },
  };
  const globals = {
    navigator: {
      serviceWorker: {
        register: async (url, options) => {
          log.push(['register', url, options]);
          // The worker activates a moment later, as a real one does.
          setTimeout(() => {
            worker.state = 'activated';
            registration.active = worker;
            registration.installing = null;
            for (const l of listeners) l();
          }, 20);
          return registration;
        },
        getRegistration: async () => registration,
      },
    },
    PushManager: function PushManager() {},
    Notification: {
      permission,
      requestPermission: async () => {
        log.push('permission');
        return answer;
      },
    },
  };
  const install = () => {
    const saved = {};
    for (const [name, value] of Object.entries(globals)) {
      saved[name] = Object.getOwnPropertyDescriptor(globalThis, name);
      Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
    }
    return () => {
      for (const [name, descriptor] of Object.entries(saved)) {
        if (descriptor) Object.defineProperty(globalThis, name, descriptor);
        else delete globalThis[name];
      }
    };
  };
  return { log, install };
}

// A P-256 public key as push.vapid answers it: 65 bytes, base64url.
const VAPID_KEY = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 7)]).toString('base64url');

async function pushEdge(calls) {
  return fakeEdge({
    rpc: (frame, { send }) => {
      calls.push({ method: frame.method, params: frame.params });
      if (frame.method === 'push.vapid') send({ op: 'ok', id: frame.id, result: { publicKey: VAPID_KEY } });
      else if (frame.method === 'push.subscribe') send({ op: 'ok', id: frame.id, result: { device: frame.params.device } });
      else if (frame.method === 'push.unsubscribe') send({ op: 'ok', id: frame.id, result: { removed: true } });
      else send({ op: 'err', id: frame.id, code: 'not_found', message: 'no' });
    },
  });
}

test('push.enable: registers the worker, waits for it, asks permission, subscribes with the VAPID key, registers the device', async (t) => {
  const calls = [];
  const edge = await pushEdge(calls);
  t.after(() => edge.close());
  const browser = fakeBrowser();
  t.after(browser.install());
  const storage = memoryStorage();
  const sb = newClient(edge, { storage, random: () => 0.5 });
  t.after(() => sb.destroy());
  await sb.connect();
  assert.equal(sb.push.supported, true);

  const registered = await sb.push.enable({ serviceWorker: '/sw/switchboard-sw.js' });
  assert.deepEqual(browser.log, [['register', '/sw/switchboard-sw.js', undefined], 'permission', ['subscribe', true, 65]]);
  assert.deepEqual(calls.map((c) => c.method), ['push.vapid', 'push.subscribe']);
  assert.deepEqual(calls[1].params.subscription, { endpoint: 'https://fcm.googleapis.com/fcm/send/abc', expirationTime: null, keys: { p256dh: 'BPk', auth: 'au' } });
  assert.match(calls[1].params.device, /^web-[0-9a-f]{24}$/);
  assert.deepEqual(registered, { device: calls[1].params.device, endpoint: 'https://fcm.googleapis.com/fcm/send/abc' });
  assert.equal(storage.getItem('switchboard:push-device'), registered.device, 'the device id is kept');

  // Enabling again reuses the browser's subscription (same key) and the same device id.
  await sb.push.enable({ serviceWorker: '/sw/switchboard-sw.js', scope: '/sw/' });
  assert.equal(browser.log.filter((e) => e[0] === 'subscribe').length, 1);
  assert.equal(calls[3].params.device, registered.device);

  assert.equal(await sb.push.disable(), true);
  assert.deepEqual(calls.at(-1), { method: 'push.unsubscribe', params: { endpoint: 'https://fcm.googleapis.com/fcm/send/abc' } });
  assert.equal(browser.log.at(-1), 'unsubscribe');
  assert.equal(await sb.push.disable(), false, 'nothing left to disable');
});

test('push.enable: a subscription made with another key is replaced; the device option is used', async (t) => {
  const calls = [];
  const edge = await pushEdge(calls);
  t.after(() => edge.close());
  const browser = fakeBrowser({ permission: 'granted', existingKey: new Uint8Array(65).fill(1) });
  t.after(browser.install());
  const sb = newClient(edge, { device: 'laptop-1' });
  t.after(() => sb.destroy());
  await sb.connect();
  await sb.push.enable({ serviceWorker: '/sw.js' });
  assert.deepEqual(browser.log.slice(1), ['unsubscribe', ['subscribe', true, 65]], 'no prompt when already granted; the old subscription goes');
  assert.equal(calls[1].params.device, 'laptop-1');
});

test('push.enable: refused permission, no Push API and bad arguments are clear errors', async (t) => {
  const calls = [];
  const edge = await pushEdge(calls);
  t.after(() => edge.close());
  const sb = newClient(edge);
  t.after(() => sb.destroy());
  await sb.connect();
  assert.equal(sb.push.supported, false, 'Node has no service workers');
  await assert.rejects(sb.push.enable({ serviceWorker: '/sw.js' }), (e) => e.code === 'not_supported');
  await assert.rejects(sb.push.enable({}), /needs \{serviceWorker/);
  await assert.rejects(sb.push.enable({ serviceWorker: '/sw.js', device: 'has space' }), /device must be/);

  const browser = fakeBrowser({ answer: 'denied' });
  t.after(browser.install());
  await assert.rejects(sb.push.enable({ serviceWorker: '/sw.js' }), (e) => e.code === 'forbidden' && /not allowed \(denied\)/.test(e.message));
  assert.deepEqual(calls, [], 'nothing reached the server');
});
