// Browser end-to-end tests of the demo in web/, served by the stack's edge, driven with
// playwright-core through Debian's chromium: two users in two browser contexts.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  addMember,
  addParticipant,
  client,
  mintToken,
  probeNotifications,
  probePresence,
  probeReceipts,
  probeRpc,
  publish,
  sleep,
  stack,
  startEdge,
  uniq,
  waitFor,
} from '../helpers/stack.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
const SCREENSHOT = join(ROOT, 'docs', 'demo.png');
const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM ?? '/usr/bin/chromium';
const { httpUrl, wsUrl } = stack();

const hana = uniq('hana');
const carlos = uniq('carlos');
const conversation = uniq('c');
const project = uniq('p');
const T = { timeout: 90_000 };

let browser;
let hanaContext;
let carlosContext;
let hanaPage;
let carlosPage;
let probes;
const pageErrors = [];
const nodeClients = [];

/** The demo's URL for a user; the token travels in the fragment, never to the server. */
const NAMES = { [hana]: 'Hana', [carlos]: 'Carlos' };
function demoUrl(user, peer, extra = {}) {
  const token = mintToken({ sub: user, name: NAMES[user] });
  const params = new URLSearchParams({ token, conversation, project, peer, peerName: NAMES[peer], ...extra });
  return `${httpUrl}/#${params}`;
}

async function open(context, user, peer, extra) {
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(`${user}: ${error.message}`));
  await page.goto(demoUrl(user, peer, extra));
  await connected(page);
  return page;
}

/** Waits for the badge to say connected (optionally through a given edge). */
async function connected(page, edgeHost) {
  const selector = edgeHost
    ? `[data-testid="conn-badge"][data-state="connected"][data-edge="${edgeHost}"]`
    : '[data-testid="conn-badge"][data-state="connected"]';
  await page.locator(selector).waitFor({ timeout: 30_000 });
}

const message = (page, text) => page.locator('[data-testid="message"]', { hasText: text });

async function send(page, text) {
  await page.getByTestId('composer').fill(text);
  await page.getByTestId('send').click();
}

/** How many message bubbles show exactly this text. */
const countOf = (page, text) =>
  page.$$eval('[data-testid="message"] .text', (nodes, t) => nodes.filter((n) => n.textContent === t).length, text);

before(async () => {
  const sdk = await fetch(`${httpUrl}/web/sdk/index.js`);
  assert.equal(sdk.status, 200, 'the edge does not serve /web/sdk/index.js: build the SDK first (scripts/test-js does)');
  await addParticipant(conversation, hana);
  await addParticipant(conversation, carlos);
  await addMember(project, hana, 'owner');
  await addMember(project, carlos, 'contractor');
  probes = {
    receipts: await probeReceipts(),
    presence: await probePresence(),
    notifications: await probeNotifications(),
    inbox: await probeRpc('inbox.list', { limit: 1 }),
    search: await probeRpc('messages.search', { q: 'probe' }),
    vapid: await probeRpc('push.vapid'),
  };
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives every launch a fresh temporary profile (its --user-data-dir).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  hanaContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  carlosContext = await browser.newContext({ viewport: { width: 390, height: 780 }, isMobile: true });
});

after(async () => {
  nodeClients.forEach((sb) => sb.destroy());
  await browser?.close();
});

test('without a token the demo asks to pick a demo user', T, async () => {
  const page = await hanaContext.newPage();
  await page.goto(`${httpUrl}/`);
  await page.getByTestId('picker').waitFor();
  assert.match(await page.getByTestId('picker').innerText(), /switchboard token --sub u1/);
  await page.close();
});

test('two users chat: each message appears on both sides, ticks go sending -> sent', T, async () => {
  hanaPage = await open(hanaContext, hana, carlos);
  carlosPage = await open(carlosContext, carlos, hana);
  await send(hanaPage, 'Hi Carlos, when can you start?');
  await message(carlosPage, 'Hi Carlos, when can you start?').waitFor();
  await message(hanaPage, 'Hi Carlos, when can you start?').locator('[data-testid="ticks"][data-status="sent"], [data-testid="ticks"][data-status="delivered"], [data-testid="ticks"][data-status="read"]').waitFor();
  await send(carlosPage, 'Monday morning works.');
  await message(hanaPage, 'Monday morning works.').waitFor();
  await message(carlosPage, 'Monday morning works.').waitFor();
  assert.equal(await countOf(hanaPage, 'Hi Carlos, when can you start?'), 1);
  assert.equal(await countOf(carlosPage, 'Monday morning works.'), 1);
  assert.equal(await hanaPage.locator('[data-testid="message"].theirs').count(), 1);
});

test('typing: the other side sees the indicator while one types, and it clears', T, async () => {
  await carlosPage.getByTestId('composer').pressSequentially('I will bring', { delay: 30 });
  await hanaPage.locator(`[data-testid="typing"][data-users="${carlos}"]`).waitFor();
  assert.match(await hanaPage.getByTestId('typing').innerText(), /is typing/);
  await carlosPage.getByTestId('composer').fill('');
  await hanaPage.locator('[data-testid="typing"][data-users=""]').waitFor();
});

test('ticks turn to read when the other side has the conversation open', T, async (t) => {
  if (!probes.receipts.served) return t.skip(probes.receipts.reason);
  await send(hanaPage, 'Please confirm the quote.');
  await message(carlosPage, 'Please confirm the quote.').waitFor();
  await message(hanaPage, 'Please confirm the quote.').locator('[data-testid="ticks"][data-status="read"]').waitFor({ timeout: 15_000 });
});

test('the project feed shows bid.new and project.update live', T, async () => {
  await publish(`project:${project}`, 'bid.new', { bidId: 'bid_101112', amount: 5000, contractor: 'Carlos · Acme Builders' }, { actor: { id: carlos, type: 'contractor' } });
  await publish(`project:${project}`, 'project.update', { title: 'Kitchen remodel: site visit booked', status: 'scheduled' });
  for (const page of [hanaPage, carlosPage]) {
    await page.locator('[data-testid="feed-item"][data-type="bid.new"]', { hasText: '$5,000' }).waitFor();
    await page.locator('[data-testid="feed-item"][data-type="project.update"]', { hasText: 'site visit booked' }).waitFor();
  }
});

test('the bell count rises when a bid is published', T, async (t) => {
  if (!probes.notifications.served) return t.skip(probes.notifications.reason);
  const before = Number(await hanaPage.getByTestId('bell-count').getAttribute('data-count'));
  await publish(`project:${project}`, 'bid.new', { bidId: 'bid_2', amount: 6200, contractor: 'Carlos · Acme Builders' }, { actor: { id: carlos, type: 'contractor' } });
  await waitFor(async () => Number(await hanaPage.getByTestId('bell-count').getAttribute('data-count')) > before, 'the bell count to rise', 15_000);
});

test('the bell shows the unread count carried by user.notification events (as the worker publishes them)', T, async () => {
  const base = await hanaPage.getByTestId('bell-count').getAttribute('data-count');
  const unread = Number(base) + 1;
  await publish(`user:${hana}`, 'user.notification', {
    id: uniq('ntf'), category: 'bid', title: 'New bid on Kitchen remodel', message: `${carlos} bid $5,000`,
    priority: 'normal', ref: { channel: `project:${project}`, seq: 1 }, unread, createdAt: new Date().toISOString(),
  });
  await hanaPage.locator(`[data-testid="bell-count"][data-count="${unread}"]`).waitFor();
  assert.equal(await hanaPage.getByTestId('bell-count').isVisible(), true);
});

test('the conversation list shows each conversation with its unread badge, live', T, async (t) => {
  if (!probes.inbox.served) {
    // Not served by this stack: the panel says so instead of listing nothing.
    await hanaPage.getByTestId('inbox-notice').waitFor();
    assert.match(await hanaPage.getByTestId('inbox-notice').innerText(), /not available/);
    return t.skip(probes.inbox.reason);
  }
  await hanaPage.locator(`[data-testid="inbox-item"][data-ch="conversation:${conversation}"]`).waitFor({ timeout: 15_000 });
  const room = uniq('c');
  await addParticipant(room, hana);
  await addParticipant(room, carlos);
  // Carlos's second device, closed at once: the presence test below needs him offline when his page closes.
  const other = client({ url: wsUrl, token: () => mintToken({ sub: carlos }) });
  try {
    await other.connect();
    await other.publish(`conversation:${room}`, 'message.new', { text: 'Are the tiles in?' }).sent();
    await other.publish(`conversation:${room}`, 'message.new', { text: 'The grey ones, I mean.' }).sent();
  } finally {
    other.destroy();
  }
  const item = hanaPage.locator(`[data-testid="inbox-item"][data-ch="conversation:${room}"]`);
  await item.and(hanaPage.locator('[data-unread="2"]')).waitFor({ timeout: 15_000 });
  assert.equal(await item.getByTestId('inbox-unread').innerText(), '2');
  assert.match(await item.innerText(), /The grey ones, I mean\./);
  assert.equal(await hanaPage.locator('[data-testid="inbox-item"]').first().getAttribute('data-ch'), `conversation:${room}`, 'the newest activity on top');
  await hanaPage.locator('[data-testid="inbox-total"]:not([data-count="0"])').waitFor();

  // Muting keeps the badge and leaves the total.
  const totalBefore = Number(await hanaPage.getByTestId('inbox-total').getAttribute('data-count'));
  await item.getByTestId('inbox-mute').click();
  await item.and(hanaPage.locator('[data-muted="true"]')).waitFor({ timeout: 15_000 });
  await waitFor(async () => Number(await hanaPage.getByTestId('inbox-total').getAttribute('data-count')) === totalBefore - 2, 'the total without the muted conversation', 15_000);

  // A click opens the conversation; reading it there clears its badge (on every page of hers).
  const page = await hanaContext.newPage();
  page.on('pageerror', (error) => pageErrors.push(`hana: ${error.message}`));
  await page.goto(demoUrl(hana, carlos));
  await connected(page);
  await page.locator(`[data-testid="inbox-item"][data-ch="conversation:${room}"]`).click();
  await message(page, 'The grey ones, I mean.').waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('.chat .channel').innerText(), room);
  await page.locator(`[data-testid="inbox-item"][data-ch="conversation:${room}"][data-unread="0"]`).waitFor({ timeout: 15_000 });
  await item.and(hanaPage.locator('[data-unread="0"]')).waitFor({ timeout: 15_000 });
  await page.close();
});

test('the search box finds a message in the conversations the user is in', T, async (t) => {
  const word = `zucchini${uniq('w').replace(/[^a-z0-9]/gi, '')}`;
  if (!probes.search.served) {
    await hanaPage.getByTestId('search-input').fill(word);
    await hanaPage.getByTestId('search-input').press('Enter');
    await hanaPage.getByTestId('search-error').waitFor();
    return t.skip(probes.search.reason);
  }
  await send(carlosPage, `Bring the ${word} seeds`);
  await message(hanaPage, `Bring the ${word} seeds`).waitFor();
  const hit = hanaPage.locator('[data-testid="search-result"]', { hasText: word });
  // The archive takes up to a second: search again until it is there.
  await waitFor(async () => {
    await hanaPage.getByTestId('search-input').fill(word);
    await hanaPage.getByTestId('search-input').press('Enter');
    await hanaPage.locator('[data-testid="search-results"][data-state="done"], [data-testid="search-results"][data-state="error"]').waitFor();
    return (await hit.count()) === 1;
  }, 'the message among the results', 15_000);
  assert.equal(await hit.getAttribute('data-ch'), `conversation:${conversation}`);
  assert.match(await hit.innerText(), new RegExp(`${word}`));
  assert.equal(await hit.locator('mark', { hasText: word }).count(), 1, 'the matched word is highlighted');
  await hanaPage.getByTestId('search-input').fill('nothing-like-this-was-ever-said');
  await hanaPage.getByTestId('search-input').press('Enter');
  await hanaPage.getByTestId('search-empty').waitFor();
  await hanaPage.getByTestId('search-input').fill(word);
  await hanaPage.getByTestId('search-input').press('Enter');
  await hit.waitFor();
});

test('the service worker is registered and shows notifications; push.enable gets as far as the browser allows', T, async () => {
  await hanaContext.grantPermissions(['notifications'], { origin: httpUrl });
  const page = await hanaContext.newPage();
  page.on('pageerror', (error) => pageErrors.push(`hana: ${error.message}`));
  const rpcs = [];
  page.on('websocket', (socket) => {
    socket.on('framesent', ({ payload }) => {
      const frame = JSON.parse(String(payload));
      if (frame.op === 'rpc') rpcs.push({ id: frame.id, method: frame.method });
    });
    socket.on('framereceived', ({ payload }) => {
      const frame = JSON.parse(String(payload));
      const call = rpcs.find((r) => r.id === frame.id && frame.op !== undefined);
      if (call && (frame.op === 'ok' || frame.op === 'err')) call.reply = frame;
    });
  });
  await page.goto(demoUrl(hana, carlos));
  await connected(page);
  const registered = await page.evaluate(async () => {
    for (let i = 0; i < 100; i++) {
      const reg = await navigator.serviceWorker.getRegistration('/web/sdk/');
      if (reg?.active) return { scope: reg.scope, script: reg.active.scriptURL };
      await new Promise((r) => setTimeout(r, 100));
    }
    return null;
  });
  assert.ok(registered, 'the service worker is active');
  assert.match(registered.script, /\/web\/sdk\/switchboard-sw\.js/);

  await page.getByTestId('push-enable').click();
  await page.locator('[data-testid="push-enable"][data-state="enabled"], [data-testid="push-enable"][data-state="shown"]').waitFor({ timeout: 30_000 });
  const state = await page.getByTestId('push-enable').getAttribute('data-state');
  const vapid = rpcs.find((r) => r.method === 'push.vapid');
  if (probes.vapid.served) {
    assert.equal(vapid?.reply?.op, 'ok', 'push.vapid answered the page');
    assert.equal(Buffer.from(vapid.reply.result.publicKey, 'base64url').length, 65);
    if (state === 'enabled') {
      // A browser with a push service: the subscription reached the workers.
      assert.equal(rpcs.find((r) => r.method === 'push.subscribe')?.reply?.op, 'ok');
    } else {
      // Headless Chromium has no push service: the browser refuses at PushManager.subscribe,
      // after push.vapid and before push.subscribe.
      assert.match(await page.getByTestId('push-enable').getAttribute('data-error'), /Registration failed|push service/i);
      assert.equal(rpcs.some((r) => r.method === 'push.subscribe'), false);
    }
  } else {
    assert.equal(state, 'shown', `Web Push is off on this stack (${probes.vapid.reason}); notifications still show`);
  }

  // A live notification is shown by the service worker, as a push would be. The page must
  // have it first (its bell takes the unread count the event carries): that tells a
  // delivery problem from a service-worker one. Up to three notifications are sent, each
  // waited for 10 s: once in a while (seen in CI only) a headless Chromium shows none of
  // the first one through its service worker although the page received it.
  const attempts = [];
  let shown = null;
  for (let attempt = 1; attempt <= 3 && !shown; attempt++) {
    const title = `Bid accepted ${uniq('t')}`;
    const unread = 700 + attempt;
    await publish(`user:${hana}`, 'user.notification', {
      id: uniq('ntf'), category: 'bid', title, message: 'Carlos starts Monday', priority: 'normal',
      ref: { channel: `project:${project}`, seq: 1 }, unread, createdAt: new Date().toISOString(),
    });
    await page.locator(`[data-testid="bell-count"][data-count="${unread}"]`).waitFor({ timeout: 15_000 });
    const found = await page.evaluate(async (wanted) => {
      const reg = await navigator.serviceWorker.getRegistration('/web/sdk/');
      for (let i = 0; i < 100; i++) {
        const hit = (await reg.getNotifications()).find((n) => n.title === wanted);
        if (hit) return { title: hit.title, body: hit.body };
        await new Promise((r) => setTimeout(r, 100));
      }
      return null;
    }, title);
    attempts.push({ attempt, delivered: true, shown: Boolean(found) });
    if (found) shown = { expected: { title, body: 'Carlos starts Monday' }, found };
  }
  assert.ok(shown, `the service worker showed none of the notifications the page received: ${JSON.stringify(attempts)}`);
  assert.deepEqual(shown.found, shown.expected);
  if (attempts.length > 1) console.log(`# service worker notification shown at attempt ${attempts.length}: ${JSON.stringify(attempts)}`);
  await page.close();
});

test('a screenshot of the demo goes to docs/demo.png', T, async () => {
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await carlosPage.getByTestId('composer').pressSequentially('Sending the updated', { delay: 20 });
  await hanaPage.locator(`[data-testid="typing"][data-users="${carlos}"]`).waitFor();
  await hanaPage.getByTestId('composer').fill('Great, see you Monday!');
  await hanaPage.screenshot({ path: SCREENSHOT });
  await hanaPage.getByTestId('composer').fill('');
  await carlosPage.getByTestId('composer').fill('');
});

test('the presence dot turns offline when the other user closes the page', T, async (t) => {
  if (!probes.presence.served) return t.skip(probes.presence.reason);
  await hanaPage.locator('[data-testid="presence-dot"][data-status="online"]').waitFor({ timeout: 15_000 });
  await carlosPage.close();
  await hanaPage.locator('[data-testid="presence-dot"][data-status="offline"]').waitFor({ timeout: 70_000 });
});

test('killing the edge: the page reconnects to a second edge and shows every message exactly once', T, async () => {
  const room = uniq('c');
  await addParticipant(room, hana);
  await addParticipant(room, carlos);
  const ch = `conversation:${room}`;
  const [x, y] = [await startEdge(), await startEdge()];
  try {
    const page = await hanaContext.newPage();
    page.on('pageerror', (error) => pageErrors.push(`hana: ${error.message}`));
    await page.goto(demoUrl(hana, carlos, { conversation: room, edges: `${x.wsUrl},${y.wsUrl}` }));
    await connected(page, `127.0.0.1:${x.port}`);
    const other = client({ url: wsUrl, token: () => mintToken({ sub: carlos }) });
    nodeClients.push(other);
    await other.connect();
    const say = (text) => other.publish(ch, 'message.new', { text }).sent();
    for (let n = 1; n <= 3; n++) await say(`before ${n}`);
    await message(page, 'before 3').waitFor();

    await x.kill('SIGKILL');
    await page.locator('[data-testid="conn-badge"][data-state="reconnecting"], [data-testid="conn-badge"][data-state="connecting"]').waitFor();
    for (let n = 1; n <= 3; n++) await say(`during ${n}`);
    await send(page, 'hana while the edge was down');
    await connected(page, `127.0.0.1:${y.port}`);
    for (let n = 1; n <= 3; n++) await say(`after ${n}`);

    const expected = [...[1, 2, 3].map((n) => `before ${n}`), ...[1, 2, 3].map((n) => `during ${n}`), 'hana while the edge was down', ...[1, 2, 3].map((n) => `after ${n}`)];
    await message(page, 'after 3').waitFor();
    await message(page, 'hana while the edge was down').locator('[data-testid="ticks"]:not([data-status="sending"])').waitFor();
    await sleep(1000);
    for (const text of expected) assert.equal(await countOf(page, text), 1, `"${text}" must show exactly once`);
    assert.equal(await page.locator('[data-testid="message"]').count(), expected.length);
    await page.close();
  } finally {
    await x.kill();
    await y.kill();
  }
});

test('a message written offline survives a reload and is sent once the edge is back', T, async () => {
  const room = uniq('c');
  await addParticipant(room, hana);
  await addParticipant(room, carlos);
  const ch = `conversation:${room}`;
  const reader = client({ url: wsUrl, token: () => mintToken({ sub: carlos }) });
  nodeClients.push(reader);
  const seen = [];
  reader.subscribe(ch, { types: ['message.new'] }, (e) => seen.push(e.event.data.text));
  await reader.connect();

  let edge = await startEdge();
  const port = edge.port;
  const page = await hanaContext.newPage();
  page.on('pageerror', (error) => pageErrors.push(`hana: ${error.message}`));
  const url = demoUrl(hana, carlos, { conversation: room, edges: edge.wsUrl });
  await page.goto(url);
  await connected(page);
  await edge.kill('SIGKILL');
  await page.locator('[data-testid="conn-badge"]:not([data-state="connected"])').waitFor();
  await send(page, 'written while offline');
  await message(page, 'written while offline').locator('[data-testid="ticks"][data-status="sending"]').waitFor();

  await page.reload();
  await message(page, 'written while offline').locator('[data-testid="ticks"][data-status="sending"]').waitFor();
  edge = await startEdge({ port });
  try {
    await connected(page);
    await message(page, 'written while offline').locator('[data-testid="ticks"]:not([data-status="sending"])').waitFor({ timeout: 30_000 });
    await waitFor(() => seen.includes('written while offline'), 'the message at the other participant');
    await sleep(1000);
    assert.deepEqual(seen, ['written while offline']);
    assert.equal(await countOf(page, 'written while offline'), 1);
    await page.close();
  } finally {
    await edge.kill();
  }
});

test('no uncaught errors in the pages', () => {
  assert.deepEqual(pageErrors, []);
});
