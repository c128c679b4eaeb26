// @switchboard/react against the real stack (scripts/test-js starts it): each hook rendered
// with React 18 through react-test-renderer, driving real clients of @switchboard/client.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createElement as h } from 'react';
import TestRenderer from 'react-test-renderer';
import {
  SwitchboardProvider,
  useChannel,
  useConnectionState,
  useInbox,
  useNotifications,
  usePresence,
  useSwitchboard,
  useTyping,
  useWho,
} from '../dist/index.js';
import {
  addMember,
  addParticipant,
  client,
  mintToken,
  probeNotifications,
  probePresence,
  publish,
  rawSocket,
  sleep,
  stack,
  uniq,
} from '../../js/test/helpers/stack.mjs';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;
const { wsUrl } = stack();
const clients = [];
const mounted = [];
after(async () => {
  for (const unmount of mounted) await unmount();
  clients.forEach((sb) => sb.destroy());
});

function userClient(user, options = {}) {
  const sb = client({ url: wsUrl, token: () => mintToken({ sub: user }), ...options });
  clients.push(sb);
  return sb;
}

/** Renders `hook` inside a provider; `result.current` is its latest value. */
async function mount(providerProps, hook) {
  const result = { current: undefined, error: undefined };
  function Probe() {
    result.current = hook();
    return null;
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(h(SwitchboardProvider, providerProps, h(Probe)));
  });
  let done = false;
  const unmount = async () => {
    if (done) return;
    done = true;
    await act(async () => renderer.unmount());
  };
  mounted.push(unmount);
  return { result, unmount };
}

/** Lets React and the sockets run until `check()` holds. */
async function until(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await act(() => sleep(50));
  }
}

/** Renders a component that throws, and returns what it threw. */
async function renderError(element) {
  const original = console.error;
  console.error = () => undefined; // React reports the error it rethrows; the assertion says enough.
  try {
    let thrown;
    try {
      await act(async () => {
        TestRenderer.create(element);
      });
    } catch (error) {
      thrown = error;
    }
    return thrown;
  } finally {
    console.error = original;
  }
}

let probes;
before(async () => {
  probes = { presence: await probePresence(), notifications: await probeNotifications() };
});

describe('provider', () => {
  test('hooks outside a provider, and a provider with neither or both of client/options, are clear errors', async () => {
    function Lonely() {
      useSwitchboard();
      return null;
    }
    assert.match(String(await renderError(h(Lonely))), /inside <SwitchboardProvider>/);
    assert.match(String(await renderError(h(SwitchboardProvider, {}, null))), /exactly one of `client` or `options`/);
    const sb = userClient(uniq('u'));
    assert.match(String(await renderError(h(SwitchboardProvider, { client: sb, options: { url: wsUrl, token: 'x' } }, null))), /exactly one/);
  });

  test('with options it connects on mount and closes on unmount; useConnectionState follows', async () => {
    const user = uniq('u');
    const WebSocket = (await import('../../js/node_modules/ws/index.js')).default;
    const { memoryStorage } = await import('@switchboard/client');
    let made;
    const { result, unmount } = await mount({ options: { url: wsUrl, token: mintToken({ sub: user }), WebSocket, storage: memoryStorage() } }, () => {
      made = useSwitchboard();
      return useConnectionState();
    });
    await until(() => result.current.state === 'connected', 'connected');
    assert.equal(result.current.user, user);
    assert.equal(result.current.transport, 'websocket');
    assert.equal(result.current.reason, 'welcome');
    await unmount();
    assert.equal(made.state, 'disconnected');
  });
});

describe('channels', () => {
  test('useChannel: events in order, type filters, and a forbidden channel as an error', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const sb = userClient(user);
    await sb.connect();
    const ch = `project:${project}`;
    const seen = [];
    const notMine = `project:${uniq('not_mine')}`;
    const { result } = await mount({ client: sb }, () => ({
      bids: useChannel(ch, { types: ['bid.*'], onEvent: (e) => seen.push(e.seq) }),
      all: useChannel(ch, { keep: 2 }),
      refused: useChannel(notMine),
    }));
    await until(() => result.current.bids.status === 'live' && result.current.all.status === 'live', 'both live');
    await publish(ch, 'bid.new', { n: 1 });
    await publish(ch, 'project.update', { n: 2 });
    await publish(ch, 'bid.update', { n: 3 });
    // Both hooks see the same frames, one after the other: wait for the last event in each.
    const last = (events) => events.at(-1)?.event.data.n;
    await until(() => last(result.current.bids.events) === 3 && last(result.current.all.events) === 3, 'the events');
    assert.deepEqual(result.current.bids.events.map((e) => e.event.data.n), [1, 3]);
    assert.deepEqual(result.current.all.events.map((e) => e.event.data.n), [2, 3], 'keep: 2 keeps the latest two');
    assert.equal(seen.length, 2);
    await until(() => result.current.refused.status === 'error', 'the refusal');
    assert.equal(result.current.refused.error.code, 'forbidden');
  });

  test('useChannel: a bad keep is a clear error', async () => {
    const sb = userClient(uniq('u'));
    function Bad() {
      useChannel('project:p1', { keep: -1 });
      return null;
    }
    assert.match(String(await renderError(h(SwitchboardProvider, { client: sb }, h(Bad)))), /keep must be a non-negative integer/);
  });

  test('useTyping: the other participant sees who types', async () => {
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const sa = userClient(a);
    const sbb = userClient(b);
    await sa.connect();
    await sbb.connect();
    const { result: typingA } = await mount({ client: sa }, () => useTyping(ch));
    const { result: typingB } = await mount({ client: sbb }, () => ({ typing: useTyping(ch), channel: useChannel(ch) }));
    await until(() => typingB.current.channel.status === 'live', 'b subscribed');
    await act(async () => typingA.current.keystroke());
    await until(() => typingB.current.typing.users.includes(a), `${b} sees ${a} typing`);
    await act(async () => typingA.current.stop());
    await until(() => typingB.current.typing.users.length === 0, 'typing ends');
  });
});

describe('presence', () => {
  test('usePresence follows a contact; useWho lists who is in the channel', async (t) => {
    if (!probes.presence.served) return t.skip(probes.presence.reason);
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const sa = userClient(a);
    const sbb = userClient(b);
    sa.subscribe(ch, () => undefined);
    await sa.connect();
    await sa.presence.setStatus('busy');
    await sbb.connect();
    const { result } = await mount({ client: sbb }, () => ({ presence: usePresence(a), who: useWho(ch, { refreshMs: 500 }) }));
    await until(() => result.current.presence?.status === 'busy', `${a} busy`);
    await until(() => result.current.who.members.some((m) => m.user === a), `${a} in who`);
    assert.equal(result.current.who.error, undefined);
  });
});

describe('notifications and inbox', () => {
  test('useNotifications: the unread count and items follow the notifications worker', async (t) => {
    if (!probes.notifications.served) return t.skip(probes.notifications.reason);
    const owner = uniq('o');
    const project = uniq('p');
    await addMember(project, owner, 'owner');
    const sb = userClient(owner);
    await sb.connect();
    const { result } = await mount({ client: sb }, () => useNotifications({ limit: 5 }));
    await until(() => result.current.unread === 0, 'unread 0 at first');
    await sb.notifications.whenLive();
    await publish(`project:${project}`, 'bid.new', { bidId: 'b1', amount: 5000 });
    await until(() => result.current.unread >= 1 && result.current.items.length >= 1, 'a notification');
    assert.ok(result.current.items[0].id.startsWith('ntf_'));
    await act(async () => {
      assert.equal(await result.current.markRead('all'), 0);
    });
    await until(() => result.current.unread === 0, 'read');
  });

  test('useInbox: the conversation listed, a message from the other participant counted live', async () => {
    const [user, other, conversation] = [uniq('u'), uniq('o'), uniq('c')];
    const ch = `conversation:${conversation}`;
    await addParticipant(conversation, user);
    await addParticipant(conversation, other);
    // What does the server answer? (the raw protocol, not the SDK)
    const raw = await rawSocket(user);
    const probe = await raw.request({ op: 'rpc', method: 'inbox.list', params: { limit: 5 } }, 7000);
    raw.close();
    const sb = userClient(user, { autoAck: false });
    await sb.connect();
    const { result } = await mount({ client: sb }, () => useInbox({ limit: 5 }));
    if (probe.op !== 'ok') {
      // Not served by this stack: the hook reports the server's refusal and stays unready.
      await until(() => result.current.error !== undefined, 'the error');
      assert.equal(result.current.error.code, probe.code);
      assert.equal(result.current.ready, false);
      return;
    }
    await until(() => result.current.entries.has(ch), 'the conversation listed', 15_000);
    assert.equal(result.current.entries.get(ch).unread, 0);
    const sender = userClient(other);
    await sender.connect();
    const message = sender.publish(ch, 'message.new', { text: 'from the hook test', replyTo: null });
    await until(() => result.current.entries.get(ch)?.unread === 1, 'unread 1 by the inbox signal', 15_000);
    assert.equal(result.current.total, 1);
    assert.equal(result.current.conversations[0].ch, ch, 'the newest activity first');
    assert.equal(result.current.entries.get(ch).last?.text, 'from the hook test');
    await act(async () => {
      await result.current.mute(ch, true);
    });
    assert.equal(result.current.total, 0);
    assert.ok(message.seq > 0);
  });
});
