// useInbox against the scripted edge of the SDK's unit tests (clients/js/test/helpers):
// the hook renders the SDK's kept inbox (first page, live inbox signals, removal, mute,
// the page read again after a reconnect) with React 18. The same hook against the real
// stack is in test/react.test.mjs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createElement as h } from 'react';
import TestRenderer from 'react-test-renderer';
import { Switchboard, memoryStorage } from '@switchboard/client';
import { SwitchboardProvider, useInbox } from '../../dist/index.js';
import { WebSocket, fakeEdge, fakeToken } from '../../../js/test/helpers/fake-edge.mjs';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await act(() => sleep(20));
  }
}

const entry = (ch, unread, updatedAt, extra = {}) => ({
  ch,
  unread,
  read: 0,
  last: { seq: 3, id: `evt_${ch}`, type: 'message.new', actor: { id: 'u2' }, text: 'hello', timestamp: updatedAt },
  muted: false,
  updatedAt,
  ...extra,
});

test('useInbox: first page, live signals, removal, mute and the page read again after a reconnect', async (t) => {
  const server = { conversations: [entry('conversation:c1', 2, '2026-12-05T10:00:01Z')], unread: 2, fail: false };
  const edge = await fakeEdge({
    rpc: (frame, { send }) => {
      if (server.fail) send({ op: 'err', id: frame.id, code: 'unavailable', message: 'the inbox is not available' });
      else if (frame.method === 'inbox.list') send({ op: 'ok', id: frame.id, result: { conversations: server.conversations, unread: server.unread, next: null } });
      else if (frame.method === 'inbox.mute') send({ op: 'ok', id: frame.id, result: { ...entry(frame.params.ch, 2, '2026-12-05T10:00:01Z'), muted: frame.params.muted } });
    },
  });
  t.after(() => edge.close());
  const signal = (data) => {
    for (const socket of edge.sockets) socket.send(JSON.stringify({ op: 'sig', ch: 'user:u1', from: 'switchboard', type: 'inbox', data }));
  };
  const sb = new Switchboard({
    url: edge.url,
    token: fakeToken({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 3600 }),
    WebSocket,
    storage: memoryStorage(),
    backoff: { initialMs: 50, maxMs: 200 },
    pingIntervalMs: 0,
  });
  t.after(() => sb.destroy());

  const result = { current: undefined };
  function Probe() {
    result.current = useInbox({ limit: 10 });
    return null;
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(h(SwitchboardProvider, { client: sb }, h(Probe)));
  });
  assert.equal(result.current.ready, false);
  await act(() => sb.connect());
  await until(() => result.current.ready, 'the first page');
  assert.deepEqual(result.current.conversations.map((e) => [e.ch, e.unread]), [['conversation:c1', 2]]);
  assert.equal(result.current.total, 2);

  signal({ ...entry('conversation:c2', 1, '2026-12-05T10:00:02Z'), total: 3 });
  await until(() => result.current.total === 3, 'the signal');
  assert.deepEqual(result.current.conversations.map((e) => e.ch), ['conversation:c2', 'conversation:c1']);
  assert.equal(result.current.entries.get('conversation:c2').unread, 1);

  signal({ ch: 'conversation:c2', removed: true, total: 2 });
  await until(() => result.current.conversations.length === 1, 'the removal');

  await act(async () => {
    const muted = await result.current.mute('conversation:c1');
    assert.equal(muted.muted, true);
  });
  assert.equal(result.current.total, 0);
  assert.equal(result.current.entries.get('conversation:c1').muted, true);

  // Away and back: the page is read again; a refusal shows as error and keeps the list.
  server.fail = true;
  for (const socket of edge.sockets) socket.terminate();
  await until(() => result.current.error !== undefined, 'the refusal');
  assert.equal(result.current.error.code, 'unavailable');
  assert.equal(result.current.conversations.length, 1);
  server.fail = false;
  server.conversations = [entry('conversation:c3', 4, '2026-12-05T10:00:09Z'), entry('conversation:c1', 2, '2026-12-05T10:00:01Z', { muted: true })];
  server.unread = 4;
  for (const socket of edge.sockets) socket.terminate();
  await until(() => result.current.total === 4 && result.current.error === undefined, 'the page after the reconnect');
  assert.deepEqual(result.current.conversations.map((e) => e.ch), ['conversation:c3', 'conversation:c1']);

  await act(async () => renderer.unmount());
  await until(() => edge.frames.some((f) => f.op === 'unsub' && f.ch === 'user:u1'), 'the unsubscription on unmount');
});
