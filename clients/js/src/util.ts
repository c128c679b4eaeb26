/** Small pure helpers: backoff, type filters, token claims, a bounded id set. */

export interface BackoffOptions {
  /** The ceiling of the first retry's delay (ms). Default 500. */
  initialMs?: number;
  /** The largest ceiling (ms). Default 30,000. */
  maxMs?: number;
  /** Growth of the ceiling per attempt. Default 2. */
  factor?: number;
}

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

/** The claims of a JWT, read without checking the signature (the server checks it). */
export function tokenClaims(token: string): { sub?: string; exp?: number } | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
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

/** A random idempotency key. */
export function randomKey(): string {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return 'k-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
