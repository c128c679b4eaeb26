// The SDK where only WebSocket (injected) and fetch exist, as in React Native: a Node
// process without DOM globals, crypto, atob, TextDecoder or URL, against the real stack.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { addParticipant, mintToken, stack, uniq } from '../helpers/stack.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const run = promisify(execFile);

test('connects, publishes, receives, calls rpc and goes away in a runtime stripped of DOM globals', async () => {
  const user = uniq('rn');
  const conversation = uniq('c');
  await addParticipant(conversation, user);
  const { stdout } = await run(process.execPath, ['--import', pathToFileURL(join(here, 'strip-globals.mjs')).href, join(here, 'app.mjs')], {
    env: {
      ...process.env,
      URL: stack().wsUrl,
      TOKEN: mintToken({ sub: user }),
      CH: `conversation:${conversation}`,
      WS_MODULE: pathToFileURL(join(here, '..', '..', 'node_modules', 'ws', 'wrapper.mjs')).href,
    },
  });
  const seen = JSON.parse(stdout);
  assert.deepEqual(seen.missing, [], 'the stripped runtime still has these globals');
  assert.equal(seen.user, user);
  assert.deepEqual(seen.got, ['from a stripped runtime']);
  assert.equal(seen.key, 26);
  assert.equal(seen.stored, 'sent');
  assert.ok(['ok', 'not_found'].includes(seen.rpc), `rpc: ${seen.rpc}`);
  assert.equal(seen.away, 'away');
  assert.equal(seen.back, 'online');
});
