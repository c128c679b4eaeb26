// The SDK against a real stack: edge(s), NATS JetStream, workers (scripts/test-js starts
// it with scripts/up). Each test uses its own users and channels.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { memoryStorage } from '../../dist/index.js';
import {
  addMember,
  addParticipant,
  client,
  freePort,
  mintToken,
  probeNotifications,
  probePresence,
  probeReceipts,
  publish,
  sleep,
  stack,
  startEdge,
  subscribeReady,
  uniq,
  waitFor,
} from '../helpers/stack.mjs';

const { wsUrl } = stack();
const clients = [];
/** A client for `user` (token minted per call, fresh each time) that is closed after the file. */
function userClient(user, options = {}) {
  const sb = client({ url: wsUrl, token: () => mintToken({ sub: user }), ...options });
  clients.push(sb);
  return sb;
}
after(() => clients.forEach((sb) => sb.destroy()));

let probes;
before(async () => {
  probes = {
    receipts: await probeReceipts(),
    presence: await probePresence(),
    notifications: await probeNotifications(),
  };
});

describe('connection', () => {
  test('connects, reports its states with reasons, and measures latency', async () => {
    const user = uniq('u');
    const sb = userClient(user);
    const states = [];
    sb.on('state', (s) => states.push(`${s.state}:${s.reason}`));
    const welcome = new Promise((resolve) => sb.once('welcome', resolve));
    await sb.connect();
    assert.equal((await welcome).user, user);
    assert.deepEqual(states, ['connecting:connect', 'connected:welcome']);
    assert.equal(sb.user, user);
    const rtt = await sb.ping();
    assert.ok(rtt >= 0 && rtt < 2000, `latency ${rtt}`);
  });

  test('a refused token ends in disconnected, with no retry until a new token', async () => {
    const user = uniq('u');
    let calls = 0;
    const sb = userClient(user, {
      token: () => {
        calls++;
        return mintToken({ sub: user, secret: 'not-the-stack-secret-at-all' });
      },
    });
    const states = [];
    sb.on('state', (s) => states.push(`${s.state}:${s.reason}`));
    await assert.rejects(sb.connect(), /unauthorized/);
    await sleep(1500);
    assert.equal(calls, 1);
    assert.deepEqual(states, ['connecting:connect', 'disconnected:bye:unauthorized']);
    sb.setToken(() => mintToken({ sub: user }));
    await waitFor(() => sb.state === 'connected', 'connected with a good token');
  });

  test('the token is refreshed in band: the session outlives the first token', async () => {
    const user = uniq('u');
    const reasons = [];
    const sb = userClient(user, {
      token: ({ reason }) => {
        reasons.push(reason);
        return mintToken({ sub: user, ttlS: 6 });
      },
    });
    await sb.connect();
    // The first token expires at 6 s (+5 s leeway on the server).
    await sleep(13_000);
    assert.equal(sb.state, 'connected');
    assert.equal(sb.stats.reconnects, 0, 'refreshing must not reconnect');
    assert.ok(reasons.filter((r) => r === 'refresh').length >= 2, `provider calls: ${reasons}`);
  });

  test('an expired token: bye token_expired, a fresh token, and the subscription resumes', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    let current = mintToken({ sub: user, ttlS: 2 });
    const sb = userClient(user, {
      // Nothing newer at refresh time; a new token only once the old one is refused.
      token: ({ reason }) => {
        if (reason === 'expired') current = mintToken({ sub: user, ttlS: 3600 });
        return current;
      },
    });
    const got = [];
    const ready = subscribeReady(sb, `project:${project}`, {}, (e) => got.push(e.event.data.n));
    const reasons = [];
    sb.on('state', (s) => reasons.push(s.reason));
    await sb.connect();
    await ready;
    await publish(`project:${project}`, 'project.update', { n: 1 });
    await waitFor(() => reasons.includes('bye:token_expired'), 'bye token_expired', 15_000);
    await publish(`project:${project}`, 'project.update', { n: 2 });
    await waitFor(() => got.length >= 2 && sb.state === 'connected', 'both updates after the reconnect', 10_000);
    await sleep(300);
    assert.deepEqual(got, [1, 2]);
  });
});

describe('subscriptions', () => {
  test('type filters, several handlers on one channel, each event once and in order', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const ch = `project:${project}`;
    const sb = userClient(user);
    const bids = [];
    const all = [];
    const ready = subscribeReady(sb, ch, { types: ['bid.*'] }, (e) => bids.push(e.event.type));
    await sb.connect();
    await ready;
    await publish(ch, 'bid.new', { bidId: 'b1', amount: 5000 });
    await waitFor(() => bids.length === 1, 'bid.new');
    // A second handler that wants everything widens the server subscription.
    sb.subscribe(ch, (e) => all.push(e.event.type));
    await sleep(300);
    await publish(ch, 'project.update', { status: 'open' });
    await publish(ch, 'bid.update', { bidId: 'b1', status: 'accepted' });
    await waitFor(() => all.length === 2 && bids.length === 2, 'the later events');
    await sleep(300);
    assert.deepEqual(bids, ['bid.new', 'bid.update']);
    assert.deepEqual(all, ['project.update', 'bid.update']);
  });

  test('since {last: N} primes a screen; a forbidden channel reports onError', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const ch = `project:${project}`;
    for (let n = 1; n <= 3; n++) await publish(ch, 'bid.new', { n });
    const sb = userClient(user);
    const got = [];
    sb.subscribe(ch, { types: ['bid.*'], since: { last: 2 } }, (e) => got.push(e.event.data.n));
    const refused = new Promise((resolve) => sb.subscribe(`project:${uniq('other')}`, { onError: resolve }, () => undefined));
    await sb.connect();
    await waitFor(() => got.length === 2, 'the last two');
    assert.deepEqual(got, [2, 3]);
    assert.equal((await refused).code, 'forbidden');
  });

  test('resuming from another epoch reports the gap', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const sb = userClient(user);
    const gap = new Promise((resolve) =>
      sb.subscribe(`project:${project}`, { since: { seq: 1, epoch: '1' }, onGap: resolve }, () => undefined),
    );
    await sb.connect();
    const info = await gap;
    assert.equal(info.reason, 'epoch_changed');
    assert.notEqual(info.epoch, '1');
  });

  test('history pages back through a channel, newest page first', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const ch = `project:${project}`;
    for (let n = 1; n <= 7; n++) await publish(ch, 'project.update', { n });
    const sb = userClient(user);
    await sb.connect();
    const pages = [];
    for await (const page of sb.historyPages(ch, { limit: 3 })) pages.push(page.map((e) => e.event.data?.n ?? e.event.type));
    assert.deepEqual(pages, [[5, 6, 7], [2, 3, 4], ['member.added', 1]]);
  });

  test('rpc: a method nobody serves is not_found', async () => {
    const sb = userClient(uniq('u'));
    await sb.connect();
    await assert.rejects(sb.rpc('nosuch.method', {}), (e) => e.code === 'not_found');
  });
});

describe('edges come and go', () => {
  test('killing the edge: the client moves to a second edge and sees every event exactly once', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const ch = `project:${project}`;
    const [x, y] = [await startEdge(), await startEdge()];
    try {
      const sb = userClient(user, { url: [x.wsUrl, y.wsUrl] });
      const got = [];
      const ready = subscribeReady(sb, ch, { types: ['bid.*'] }, (e) => got.push(e.event.data.n));
      const states = [];
      sb.on('state', (s) => states.push(s));
      await sb.connect();
      await ready;
      for (let n = 1; n <= 5; n++) await publish(ch, 'bid.new', { n });
      await waitFor(() => got.length === 5, 'five events');
      await x.kill('SIGKILL');
      for (let n = 6; n <= 10; n++) await publish(ch, 'bid.new', { n });
      await waitFor(() => got.length >= 10, 'the events published while the edge was down', 15_000);
      await sleep(500);
      assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assert.ok(states.some((s) => s.state === 'reconnecting'));
      assert.equal(states.at(-1).state, 'connected');
      assert.equal(states.at(-1).url, y.wsUrl);
    } finally {
      await x.kill();
      await y.kill();
    }
  });

  test('a draining edge (SIGTERM): bye draining, an immediate move, nothing lost', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const ch = `project:${project}`;
    const [x, y] = [await startEdge(), await startEdge()];
    try {
      const sb = userClient(user, { url: [x.wsUrl, y.wsUrl] });
      const got = [];
      const ready = subscribeReady(sb, ch, {}, (e) => got.push(e.event.data?.n));
      const reasons = [];
      sb.on('state', (s) => reasons.push(s.reason));
      await sb.connect();
      await ready;
      await publish(ch, 'bid.new', { n: 1 });
      await waitFor(() => got.includes(1), 'the first event');
      const killed = x.kill('SIGTERM');
      await waitFor(() => reasons.includes('bye:draining'), 'bye draining');
      await publish(ch, 'bid.new', { n: 2 });
      await waitFor(() => got.includes(2) && sb.state === 'connected', 'the second event on the other edge');
      await killed;
      assert.deepEqual(got.filter((n) => n !== undefined), [1, 2]);
    } finally {
      await x.kill();
      await y.kill();
    }
  });

  test('SSE fallback: events, a resume with the cursor on another edge, rpc over HTTP', async () => {
    const user = uniq('u');
    const project = uniq('p');
    await addMember(project, user);
    const ch = `project:${project}`;
    const [x, y] = [await startEdge(), await startEdge()];
    try {
      const sb = userClient(user, { url: [x.wsUrl, y.wsUrl], transport: 'sse' });
      const got = [];
      const ready = subscribeReady(sb, ch, { types: ['bid.*'] }, (e) => got.push(e.event.data.n));
      await sb.connect();
      assert.equal(sb.transport, 'sse');
      await ready;
      await publish(ch, 'bid.new', { n: 1 });
      await waitFor(() => got.length === 1, 'an event over SSE');
      await x.kill('SIGKILL');
      await publish(ch, 'bid.new', { n: 2 });
      await publish(ch, 'project.update', { n: 99 });
      await waitFor(() => got.length === 2 && sb.state === 'connected', 'the event published while the stream was down', 15_000);
      await sleep(300);
      assert.deepEqual(got, [1, 2]);
      await assert.rejects(sb.rpc('nosuch.method', {}), (e) => e.code === 'not_found');
    } finally {
      await x.kill();
      await y.kill();
    }
  });
});

describe('chat', () => {
  test('publish: status sending -> sent, own event once, a retried key is stored once', async () => {
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const sa = userClient(a);
    const sb = userClient(b);
    const seenByB = [];
    const seenByA = [];
    const ready = [
      subscribeReady(sb, ch, { types: ['message.new'] }, (e) => seenByB.push(e)),
      subscribeReady(sa, ch, { types: ['message.new'] }, (e) => seenByA.push(e)),
    ];
    await Promise.all([sa.connect(), sb.connect(), ...ready]);
    const message = sa.publish(ch, 'message.new', { text: 'hello' }, { key: 'k-1' });
    const statuses = [message.status];
    message.on('status', (s) => statuses.push(s));
    await message.sent();
    assert.deepEqual(statuses, ['sending', 'sent']);
    await waitFor(() => seenByB.length === 1 && seenByA.length === 1, 'the message on both sides');
    assert.equal(seenByB[0].event.id, message.eventId);
    assert.equal(seenByB[0].event.actor.id, a);
    // The same key from another connection of the same user: the same stored event.
    const again = userClient(a);
    await again.connect();
    const retry = again.publish(ch, 'message.new', { text: 'hello' }, { key: 'k-1' });
    await retry.sent();
    assert.equal(retry.seq, message.seq);
    assert.equal(retry.eventId, message.eventId);
    await sleep(500);
    assert.equal(seenByB.length, 1);
  });

  test('offline queue: a message written with no edge reachable is sent once one is', async () => {
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const storage = memoryStorage();
    const deadUrl = `ws://127.0.0.1:${await freePort()}/v1/ws`;
    const offline = userClient(a, { url: deadUrl, storage });
    offline.connect().catch(() => undefined);
    const queued = offline.publish(ch, 'message.new', { text: 'written offline' });
    await sleep(300);
    assert.equal(queued.status, 'sending');
    offline.destroy(); // the "page" goes away with the message still queued

    const reader = userClient(b);
    const seen = [];
    const ready = subscribeReady(reader, ch, { types: ['message.new'] }, (e) => seen.push(e.event.data.text));
    await reader.connect();
    await ready;
    const online = userClient(a, { storage });
    const [restored] = await online.pendingMessages();
    assert.equal(restored.key, queued.key);
    await online.connect();
    await restored.sent();
    await waitFor(() => seen.length === 1, 'the queued message');
    await sleep(300);
    assert.deepEqual(seen, ['written offline']);
  });

  test('typing: the other participant sees the indicator, and sees it end', async () => {
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const sa = userClient(a);
    const sb = userClient(b);
    const ready = [subscribeReady(sa, ch, {}, () => undefined), subscribeReady(sb, ch, {}, () => undefined)];
    await Promise.all([sa.connect(), sb.connect(), ...ready]);
    const seen = [];
    sb.typing(ch).onChange((users) => seen.push(users.join(',')));
    sa.typing(ch).keystroke();
    await waitFor(() => seen.includes(a), `${a} typing`);
    sa.typing(ch).stop();
    await waitFor(() => seen.at(-1) === '', 'typing ended');
  });

  test('receipts: delivered when the other side receives, read when it reads', async (t) => {
    if (!probes.receipts.served) return t.skip(probes.receipts.reason);
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const sa = userClient(a);
    const sb = userClient(b);
    const received = [];
    const ready = [
      subscribeReady(sa, ch, { types: ['message.new'] }, () => undefined),
      subscribeReady(sb, ch, { types: ['message.new'] }, (e) => received.push(e)),
    ];
    await Promise.all([sa.connect(), sb.connect(), ...ready]);
    const message = sa.publish(ch, 'message.new', { text: 'tick tock' });
    const statuses = [];
    message.on('status', (s) => statuses.push(s));
    await waitFor(() => received.length === 1, 'the message at b');
    await waitFor(() => message.status === 'delivered', 'delivered (auto-ack)');
    sb.read(ch, received[0].seq);
    await waitFor(() => message.status === 'read', 'read');
    assert.deepEqual(statuses, ['sent', 'delivered', 'read']);
  });
});

describe('presence and notifications', () => {
  test('presence: setStatus, watch a contact, who', async (t) => {
    if (!probes.presence.served) return t.skip(probes.presence.reason);
    const [a, b] = [uniq('a'), uniq('b')];
    const conversation = uniq('c');
    await addParticipant(conversation, a);
    await addParticipant(conversation, b);
    const ch = `conversation:${conversation}`;
    const sa = userClient(a);
    const sb = userClient(b);
    sa.subscribe(ch, () => undefined);
    await sa.connect();
    await sa.presence.setStatus('busy', 'On site');
    const seen = [];
    sb.presence.watch(a, (p) => seen.push(p.status));
    await sb.connect();
    await waitFor(() => seen.at(-1) === 'busy', `${a} busy`);
    const members = await sb.presence.who(ch);
    assert.ok(members.some((m) => m.user === a));
    sa.close();
    await waitFor(() => seen.at(-1) === 'offline', `${a} offline`, 70_000);
  });

  test('unread count stream follows user.notification and notification.read events', async () => {
    const user = uniq('u');
    const sb = userClient(user);
    const counts = [];
    const fresh = [];
    sb.notifications.onUnread((n) => counts.push(n));
    sb.notifications.onNotification((n) => fresh.push(n.id));
    await sb.connect();
    await sb.notifications.whenLive();
    const note = (id, unread) => ({ id, category: 'bid', title: 'New bid', message: '$5,000', priority: 'normal', unread, createdAt: new Date().toISOString() });
    await publish(`user:${user}`, 'user.notification', note('ntf_1', 1));
    await publish(`user:${user}`, 'user.notification', note('ntf_2', 2));
    await waitFor(() => counts.at(-1) === 2, 'unread 2');
    await publish(`user:${user}`, 'notification.read', { ids: ['ntf_1', 'ntf_2'], unread: 0 });
    await waitFor(() => counts.at(-1) === 0, 'unread 0');
    assert.deepEqual(fresh, ['ntf_1', 'ntf_2']);
  });

  test('notifications.list and markRead through the notifications worker', async (t) => {
    if (!probes.notifications.served) return t.skip(probes.notifications.reason);
    const owner = uniq('o');
    const project = uniq('p');
    await addMember(project, owner, 'owner');
    const sb = userClient(owner);
    const counts = [];
    sb.notifications.onUnread((n) => counts.push(n));
    await sb.connect();
    await sb.notifications.whenLive();
    await publish(`project:${project}`, 'bid.new', { bidId: 'b1', amount: 5000 });
    await waitFor(() => counts.at(-1) >= 1, 'a notification for the owner', 10_000);
    const page = await sb.notifications.list({ limit: 10 });
    assert.ok(page.items.length >= 1 && page.items[0].id.startsWith('ntf_'));
    assert.equal(await sb.notifications.markRead('all'), 0);
  });
});
