/**
 * Small pure helpers: backoff, type filters, token claims, a bounded id set, randomness.
 * Nothing here needs the DOM or `crypto`, `atob`, `TextDecoder` or `URL`: the SDK runs
 * where only `WebSocket` and `fetch` exist (React Native).
 */

import type { BackoffOptions } from './types.js';

/**
 * Exponential backoff with full jitter: attempt n (0-based) waits a uniformly random
 * time in [0, min(maxMs, initialMs * factor^n)], so a crowd of clients that lost the same
 * edge spreads out instead of reconnecting in waves.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initial = options.initialMs ?? 500;
  const max = options.maxMs ?? 30_000;
  const factor = options.factor ?? 2;
  const ceiling = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.floor(random() * ceiling);
}

/**
 * Whether an event type matches a filter of the protocol: an exact type, `prefix.*`
 * (every type starting with `prefix.`, at any depth) or `*`.
 */
export function typeMatches(filter: string, type: string): boolean {
  if (filter === '*') return true;
  if (filter.endsWith('.*')) return type.startsWith(filter.slice(0, -1));
  return filter === type;
}

/** Whether a type passes a list of filters (absent or empty = everything). */
export function typesMatch(filters: readonly string[] | undefined, type: string): boolean {
  return !filters || filters.length === 0 || filters.some((f) => typeMatches(f, type));
}

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** base64 or base64url (padding optional) to bytes; undefined when it is neither. */
export function base64UrlBytes(text: string): Uint8Array | undefined {
  const clean = text.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  if (clean.length % 4 === 1) return undefined;
  const out = new Uint8Array(Math.floor((clean.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const char of clean) {
    const digit = BASE64URL.indexOf(char);
    if (digit < 0) return undefined;
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (value >> bits) & 0xff;
    }
  }
  return out;
}

/** UTF-8 bytes to a string (`TextDecoder` is missing from some JavaScript engines). */
export function utf8(bytes: Uint8Array): string {
  if (typeof TextDecoder === 'function') return new TextDecoder().decode(bytes);
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i++]!;
    let code: number;
    if (b < 0x80) code = b;
    else if (b >= 0xf0) code = ((b & 0x07) << 18) | ((bytes[i++]! & 0x3f) << 12) | ((bytes[i++]! & 0x3f) << 6) | (bytes[i++]! & 0x3f);
    else if (b >= 0xe0) code = ((b & 0x0f) << 12) | ((bytes[i++]! & 0x3f) << 6) | (bytes[i++]! & 0x3f);
    else code = ((b & 0x1f) << 6) | (bytes[i++]! & 0x3f);
    out += String.fromCodePoint(code);
  }
  return out;
}

/** The claims of a JWT, read without checking the signature (the server checks it). */
export function tokenClaims(token: string): { sub?: string; exp?: number } | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  const bytes = base64UrlBytes(part);
  if (!bytes) return undefined;
  try {
    const claims: unknown = JSON.parse(utf8(bytes));
    return typeof claims === 'object' && claims !== null ? (claims as { sub?: string; exp?: number }) : undefined;
  } catch {
    return undefined;
  }
}

/** A set that remembers only its most recent `capacity` entries. */
export class RecentSet<T> {
  private items = new Set<T>();
  constructor(private readonly capacity: number) {}

  has(item: T): boolean {
    return this.items.has(item);
  }

  add(item: T): void {
    this.items.delete(item);
    this.items.add(item);
    if (this.items.size > this.capacity) {
      const oldest = this.items.values().next().value as T;
      this.items.delete(oldest);
    }
  }
}

/**
 * The default source of uniform random numbers in [0, 1): `crypto.getRandomValues` where
 * it exists (browsers, Node), else `Math.random` (pass `random` to do better there).
 */
export function defaultRandom(): () => number {
  const crypto = (globalThis as { crypto?: { getRandomValues?(array: Uint32Array): Uint32Array } }).crypto;
  if (typeof crypto?.getRandomValues === 'function') {
    const word = new Uint32Array(1);
    return () => crypto.getRandomValues!(word)[0]! / 2 ** 32;
  }
  return Math.random;
}

/** A random idempotency key (96 bits). Keys need to be unique, not secret. */
export function randomKey(random: () => number = defaultRandom()): string {
  let hex = '';
  for (let i = 0; i < 12; i++) hex += Math.floor(random() * 256).toString(16).padStart(2, '0');
  return 'k-' + hex;
}

/** `ws://host:port/v1/ws` -> `http://host:port` (string work only: `URL` is partial in React Native). */
export function httpBase(wsUrl: string): string {
  let url = wsUrl;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    // A relative URL (a page's own edge): resolve against the page.
    const href = (globalThis as { location?: { href: string } }).location?.href;
    if (!href) throw new TypeError(`Switchboard: the url ${JSON.stringify(wsUrl)} must be absolute (ws:// or wss://)`);
    url = new URL(url, href).href;
  }
  const match = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]+)/i.exec(url)!;
  const scheme = match[1]!.toLowerCase();
  const http = scheme === 'wss' ? 'https' : scheme === 'ws' ? 'http' : scheme;
  return `${http}://${match[2]}`;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
