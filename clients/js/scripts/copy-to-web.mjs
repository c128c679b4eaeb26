// Copies the built SDK (dist/*.js and source maps) to web/sdk/, where the edge serves it
// to the demo app as /web/sdk/index.js in development mode. web/sdk/ is not committed.
import { cpSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', 'dist');
const target = join(here, '..', '..', '..', 'web', 'sdk');
rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
for (const name of readdirSync(dist)) {
  if (name.endsWith('.js') || name.endsWith('.js.map')) cpSync(join(dist, name), join(target, name));
}
console.log(`copied the SDK to ${target}`);
