// Browser helpers: a static file server (a page on an origin of its own) and Debian's
// chromium driven with playwright-core.
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8' };

/**
 * Serves `routes` (path -> a file path, or {body, type}) on 127.0.0.1 at a free port.
 * Resolves with `{origin, close}`.
 */
export async function servePages(routes) {
  const server = createServer(async (request, response) => {
    const route = routes[new URL(request.url, 'http://x').pathname];
    if (!route) {
      response.writeHead(404).end('not found');
      return;
    }
    try {
      const body = typeof route === 'string' ? await readFile(route) : route.body;
      const ext = typeof route === 'string' ? route.slice(route.lastIndexOf('.')) : '.html';
      response.writeHead(200, { 'content-type': (typeof route === 'object' && route.type) || TYPES[ext] || 'application/octet-stream' }).end(body);
    } catch (error) {
      response.writeHead(500).end(String(error));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** Debian's chromium, headless. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.SWITCHBOARD_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
