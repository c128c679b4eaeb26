// Builds the two bundles of the package from src/ with esbuild (tsc has already written
// the ESM modules and the type declarations to dist/):
//   dist/index.cjs           CommonJS, for `require('@switchboard/client')`
//   dist/switchboard.min.js  one minified script for a <script> tag: the global `Switchboard`
//                            holds the package's exports (`new Switchboard.Switchboard(...)`)
// copies the service worker of Web Push (sw/switchboard-sw.js, plain JavaScript that runs
// as it is) to dist/switchboard-sw.js, and the repository's LICENSE beside package.json,
// where `npm pack` takes it.
import { build } from 'esbuild';
import { copyFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const common = {
  entryPoints: [join(root, 'src', 'index.ts')],
  bundle: true,
  // Browsers of the last years and Node 20; nothing platform-specific is imported.
  platform: 'neutral',
  target: ['es2020'],
  logLevel: 'warning',
};
await build({ ...common, format: 'cjs', outfile: join(root, 'dist', 'index.cjs') });
await build({ ...common, format: 'iife', globalName: 'Switchboard', minify: true, outfile: join(root, 'dist', 'switchboard.min.js') });

copyFileSync(join(root, 'sw', 'switchboard-sw.js'), join(root, 'dist', 'switchboard-sw.js'));

const license = join(root, '..', '..', 'LICENSE');
if (existsSync(license)) copyFileSync(license, join(root, 'LICENSE'));
