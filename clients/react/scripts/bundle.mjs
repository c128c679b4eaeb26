// dist/index.cjs for `require('@switchboard/react')` (tsc has written the ESM modules and
// the type declarations); react and @switchboard/client stay the app's own copies. Copies
// the repository's LICENSE beside package.json, where `npm pack` takes it.
import { build } from 'esbuild';
import { copyFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [join(root, 'src', 'index.ts')],
  bundle: true,
  platform: 'neutral',
  target: ['es2020'],
  format: 'cjs',
  external: ['react', '@switchboard/client'],
  outfile: join(root, 'dist', 'index.cjs'),
  logLevel: 'warning',
});
const license = join(root, '..', '..', 'LICENSE');
if (existsSync(license)) copyFileSync(license, join(root, 'LICENSE'));
