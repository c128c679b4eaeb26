// Helpers for tests against a real stack started by scripts/up (scripts/test-js starts
// one and exports its stack.env): tokens, publishing as a backend, extra edges, and
// probes that tell whether a server feature is served yet.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createServer } from 'node:net';
import WebSocket from 'ws';
import { Switchboard, memoryStorage } from '../../dist/index.js';

/** The stack's coordinates, from the environment (or the stack.env file it names). */
export function stack() {
  const env = { ...process.env };
  if (!env.SWITCHBOARD_EDGE_URL && env.SWITCHBOARD_STACK_ENV) {
    for (const line of readFileSync(env.SWITCHBOARD_STACK_ENV, 'utf8').split('\n')) {
      const at = line.indexOf('=');
      if (at > 0) env[line.slice(0, at)] = line.slice(at + 1);
    }
  }
  for (const key of ['SWITCHBOARD_EDGE_URL', 'SWITCHBOARD_JWT_SECRET', 'SWITCHBOARD_NATS_URL', 'SWITCHBOARD_NATS_SERVICE_NKEY']) {
    if (!env[key]) throw new Error(`${key} is not set: run these tests with scripts/test-js (it starts the stack)`);
  }
  const wsUrl = env.SWITCHBOARD_EDGE_URL;
  return {
    wsUrl,
    httpUrl: wsUrl.replace(/^ws/, 'http').replace(/\/v1\/ws$/, ''),
    secret: env.SWITCHBOARD_JWT_SECRET,
    natsUrl: env.SWITCHBOARD_NATS_URL,
    // NATS refuses anonymous clients: an extra edge connects as the edge role, whose seed
    // scripts/up keeps beside the service seed stack.env names.
    edgeNkey: join(dirname(env.SWITCHBOARD_NATS_SERVICE_NKEY), 'edge.nk'),
    edgeBin: env.SWITCHBOARD_EDGE_BIN,
  };
}

const b64url = (value) => Buffer.from(value).toString('base64url');

/** An HS256 JWT signed with the stack's secret (the server checks it; so do we here). */
export function mintToken({ sub, ttlS = 3600, role, channels, name, secret = stack().secret }) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, exp: now + ttlS };
  if (name) claims.name = name;
  if (role) claims.role = role;
  if (channels) claims.channels = channels;
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** A name unique to this run, so tests never see each other's channels or users. */
export function uniq(prefix) {
  return `${prefix}_${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns something truthy; fails with `what` after `timeoutMs`. */
export async function waitFor(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Publishes an event as a backend, through the edge's `POST /v1/publish`. */
export async function publish(channel, type, data, extra = {}, httpUrl = stack().httpUrl) {
  const token = mintToken({ sub: 'test-backend', role: 'service', ttlS: 600 });
  const response = await fetch(`${httpUrl}/v1/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, type, data, ...extra }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`publish ${type} on ${channel}: HTTP ${response.status} ${JSON.stringify(body)}`);
  return body;
}

/**
 * Makes `user` a participant of `conversation:<id>` / a member of `project:<id>`, and waits
 * until the edge lets them subscribe (the membership worker and the edges' KV watch take
 * up to a second).
 */
export async function addParticipant(conversation, user) {
  await publish(`conversation:${conversation}`, 'conversation.participant_added', { user });
  await waitAllowed(user, `conversation:${conversation}`);
}

export async function addMember(project, user, role = 'member') {
  await publish(`project:${project}`, 'member.added', { user, role });
  await waitAllowed(user, `project:${project}`);
}

/** A raw socket speaking the protocol, for probes and for checks independent of the SDK. */
export async function rawSocket(user, wsUrl = stack().wsUrl) {
  const ws = new WebSocket(wsUrl, 'switchboard.v1', { headers: { Authorization: `Bearer ${mintToken({ sub: user })}` } });
  const frames = [];
  const waiters = new Set();
  ws.on('message', (data) => {
    const frame = JSON.parse(data.toString());
    frames.push(frame);
    for (const waiter of [...waiters]) waiter();
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  let nextId = 1;
  const raw = {
    frames,
    send: (frame) => ws.send(JSON.stringify(frame)),
    /** Sends a request and resolves with its reply (`ok` or `err`). */
    request: async (frame, timeoutMs = 5000) => {
      const id = nextId++;
      raw.send({ ...frame, id });
      return raw.next((f) => f.id === id && (f.op === 'ok' || f.op === 'err' || f.op === 'pong'), timeoutMs, `reply to ${frame.op}`);
    },
    /** Resolves with the first frame (already received or coming) that matches. */
    next: (match, timeoutMs = 5000, what = 'a frame') =>
      new Promise((resolve, reject) => {
        const check = () => {
          const found = frames.find(match);
          if (found) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${what}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
    close: () => ws.close(),
  };
  return raw;
}

async function waitAllowed(user, ch) {
  const raw = await rawSocket(user);
  try {
    await waitFor(async () => {
      const reply = await raw.request({ op: 'history', ch, limit: 1 });
      return reply.op === 'ok';
    }, `${user} to be allowed on ${ch}`);
  } finally {
    raw.close();
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts one more edge on the stack's NATS (the one scripts/up runs must stay up: scripts/up
 * stops everything when its edge exits), with `env` on top of the stack's settings.
 * Resolves once it answers /readyz.
 */
export async function startEdge({ port, webDir, env: extra = {} } = {}) {
  const { edgeBin, natsUrl, edgeNkey, secret } = stack();
  if (!edgeBin) throw new Error('SWITCHBOARD_EDGE_BIN is not set: run these tests with scripts/test-js');
  port ??= await freePort();
  const env = {
    ...process.env,
    SWITCHBOARD_NATS_URL: natsUrl,
    SWITCHBOARD_NATS_NKEY: edgeNkey,
    SWITCHBOARD_JWT_SECRET: secret,
    SWITCHBOARD_EDGE_ADDR: `127.0.0.1:${port}`,
    SWITCHBOARD_DRAIN_GRACE_MS: '2000',
  };
  delete env.SWITCHBOARD_WEB_DIR;
  if (webDir) env.SWITCHBOARD_WEB_DIR = webDir;
  Object.assign(env, extra);
  const child = spawn(edgeBin, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (chunk) => {
    log = (log + chunk.toString()).slice(-4000);
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const httpUrl = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`switchboard-edge exited: ${log}`);
    try {
      return (await fetch(`${httpUrl}/readyz`)).ok;
    } catch {
      return false;
    }
  }, `the edge on port ${port} to be ready`, 30_000);
  return {
    port,
    httpUrl,
    wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
    /** Sends a signal (SIGKILL: the edge dies at once; SIGTERM: it drains) and waits for the exit. */
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

/** An SDK client for Node: `ws` as WebSocket, memory storage unless given. */
export function client(options) {
  return new Switchboard({
    WebSocket,
    storage: memoryStorage(),
    backoff: { initialMs: 100, maxMs: 1000 },
    ...options,
  });
}

// --- probes: is a server feature served yet? ------------------------------------------------
// They use the raw protocol, never the SDK, so an SDK bug cannot pass for a missing server.

/** Receipts: a `read` must come back as a `message.receipt` on the conversation. */
export async function probeReceipts() {
  const conversation = uniq('probe_rc');
  const [a, b] = [uniq('pa'), uniq('pb')];
  await addParticipant(conversation, a);
  await addParticipant(conversation, b);
  const ch = `conversation:${conversation}`;
  const ra = await rawSocket(a);
  const rb = await rawSocket(b);
  try {
    await ra.request({ op: 'sub', ch });
    const ok = await ra.request({ op: 'pub', ch, type: 'message.new', data: { text: 'probe' } });
    rb.send({ op: 'read', ch, seq: ok.seq });
    await ra.next((f) => f.op === 'evt' && f.event.type === 'message.receipt', 5000);
    return { served: true };
  } catch {
    return { served: false, reason: 'receipts: no `message.receipt` event within 5 s of a `read` (the receipts worker)' };
  } finally {
    ra.close();
    rb.close();
  }
}

/**
 * Presence: the `presence` frame must be served, a contact must be allowed to watch
 * `presence:<user>`, and a status change must come out there as a `user.presence` event.
 */
export async function probePresence() {
  const conversation = uniq('probe_pr');
  const [a, b] = [uniq('pa'), uniq('pb')];
  await addParticipant(conversation, a);
  await addParticipant(conversation, b);
  const ra = await rawSocket(a);
  const rb = await rawSocket(b);
  const where = 'docs/protocol.md, Presence';
  try {
    const set = await ra.request({ op: 'presence', status: 'busy' });
    if (set.op !== 'ok') return { served: false, reason: `presence: the edge answers the \`presence\` frame with \`${set.code}\` (${set.message}) — ${where}` };
    let watch;
    for (let i = 0; i < 10; i++) {
      watch = await rb.request({ op: 'sub', ch: `presence:${a}`, since: { last: 1 } });
      if (watch.op === 'ok') break;
      await sleep(300);
    }
    if (watch.op !== 'ok') return { served: false, reason: `presence: a contact may not subscribe to \`presence:<user>\` (\`${watch.code}\`: ${watch.message}); "contacts" privacy is not applied yet — ${where}` };
    try {
      await rb.next((f) => f.op === 'evt' && f.event.type === 'user.presence', 5000);
    } catch {
      return { served: false, reason: `presence: no \`user.presence\` event on \`presence:<user>\` within 5 s of a status change (the presence worker) — ${where}` };
    }
    return { served: true };
  } finally {
    ra.close();
    rb.close();
  }
}

/** Notifications: `notifications.list` must be answered by the notifications worker. */
export async function probeNotifications() {
  const raw = await rawSocket(uniq('pn'));
  try {
    const reply = await raw.request({ op: 'rpc', method: 'notifications.list', params: { limit: 1 } }, 7000);
    if (reply.op === 'ok') return { served: true };
    return { served: false, reason: `notifications: \`rpc notifications.list\` answers \`${reply.code}\` (${reply.message}): the notifications worker is not serving yet` };
  } finally {
    raw.close();
  }
}

/**
 * Subscribes and resolves once the server has confirmed the subscription: events
 * published after that are certain to be delivered (before it, they may predate `ok.seq`).
 */
export function subscribeReady(sb, ch, options, handler) {
  return new Promise((resolve, reject) => {
    sb.subscribe(
      ch,
      {
        ...options,
        onSubscribed: (info) => {
          options.onSubscribed?.(info);
          resolve(info);
        },
        onError: (error) => {
          options.onError?.(error);
          reject(error);
        },
      },
      handler,
    );
  });
}

/**
 * Whether the workers serve `method` yet: `{served: true, result}` when a fresh user's call
 * is answered, else `{served: false, reason}` with the server's refusal.
 */
export async function probeRpc(method, params = {}) {
  const raw = await rawSocket(uniq('pr'));
  try {
    const reply = await raw.request({ op: 'rpc', method, params }, 7000);
    if (reply.op === 'ok') return { served: true, result: reply.result };
    return { served: false, reason: `\`rpc ${method}\` answers \`${reply.code}\` (${reply.message}): not served by this stack yet` };
  } finally {
    raw.close();
  }
}

/** Removes `user` from `conversation:<id>` (the membership worker applies it within a second). */
export async function removeParticipant(conversation, user) {
  await publish(`conversation:${conversation}`, 'conversation.participant_removed', { user });
}
