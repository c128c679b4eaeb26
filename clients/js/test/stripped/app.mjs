// Runs in the stripped environment (strip-globals.mjs): the SDK with only an injected
// WebSocket, storage and randomness, against the real stack. Prints what it saw as JSON.
import { Switchboard } from '../../dist/index.js';

const [wsModule, env] = [process.env.WS_MODULE, process.env];
const { default: WebSocket } = await import(wsModule);
const missing = ['crypto', 'atob', 'TextDecoder', 'URL', 'localStorage', 'document', 'WebSocket'].filter((n) => globalThis[n] !== undefined);
const items = new Map();
const storage = { getItem: async (k) => items.get(k) ?? null, setItem: async (k, v) => void items.set(k, v), removeItem: async (k) => void items.delete(k) };
let seed = 42;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const sb = new Switchboard({ url: env.URL, token: () => env.TOKEN, WebSocket, storage, random, idleAfterMs: 200, pingIntervalMs: 0 });
// Generous: CI runs this beside browser tests on two cores. A hang says where it was.
let step = 'start';
const timer = setTimeout(() => {
  console.error(`timed out at: ${step}`);
  process.exit(2);
}, 45_000);
const got = [];
sb.subscribe(env.CH, { types: ['message.*'] }, (e) => got.push(e.event.data.text));
step = 'connect';
await sb.connect();
step = 'publish';
const message = sb.publish(env.CH, 'message.new', { text: 'from a stripped runtime' });
await message.sent();
step = 'receive';
while (got.length === 0) await new Promise((r) => setTimeout(r, 50));
step = 'rpc';
let rpc;
try {
  rpc = await sb.rpc('notifications.list', { limit: 1 });
  rpc = 'ok';
} catch (error) {
  rpc = error.code;
}
step = 'away';
sb.setAppState('background');
await new Promise((r) => setTimeout(r, 400));
const away = sb.presence.status;
sb.setAppState('active');
console.log(JSON.stringify({ missing, user: sb.user, got, key: message.key.length, stored: message.status, rpc, away, back: sb.presence.status }));
sb.destroy();
clearTimeout(timer);
