/**
 * Typing indicators over signals: `keystroke()` sends `typing: true` at most once per
 * throttle interval and `typing: false` after a pause; others' indicators expire by
 * themselves when their signals stop (signals are lossy, so the "stopped" one may never
 * come), and end at once when their message arrives.
 */

import { Emitter } from './emitter.js';
import type { Signal, TypingOptions } from './types.js';

export interface TypingHost {
  send(typing: boolean): boolean;
  me(): string | undefined;
}

export class Typing extends Emitter<{ change: string[] }> {
  private lastSent = 0;
  private typing = false;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly remote = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly throttleMs: number;
  private readonly idleMs: number;
  private readonly expireMs: number;

  constructor(
    readonly ch: string,
    options: TypingOptions,
    private readonly host: TypingHost,
  ) {
    super();
    this.throttleMs = options.throttleMs ?? 2_000;
    this.idleMs = options.idleMs ?? 4_000;
    this.expireMs = options.expireMs ?? 6_000;
  }

  /** Call on every keystroke (or input event). */
  keystroke(): void {
    const now = Date.now();
    if (!this.typing || now - this.lastSent >= this.throttleMs) {
      if (this.host.send(true)) {
        this.lastSent = now;
        this.typing = true;
      }
    }
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stop(), this.idleMs);
  }

  /** Call when the message is sent or the input cleared. */
  stop(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (!this.typing) return;
    this.typing = false;
    this.lastSent = 0;
    this.host.send(false);
  }

  /** Users typing now (never the current user). */
  get users(): string[] {
    return [...this.remote.keys()];
  }

  /** Calls `listener` with the users typing, now and on every change. */
  onChange(listener: (users: string[]) => void): () => void {
    listener(this.users);
    return this.on('change', listener);
  }

  /** @internal */
  remoteSignal(signal: Signal): void {
    if (!signal.from || signal.from === this.host.me()) return;
    const typing = (signal.data as { typing?: boolean } | null)?.typing !== false;
    if (typing) {
      const had = this.remote.has(signal.from);
      const old = this.remote.get(signal.from);
      if (old) clearTimeout(old);
      this.remote.set(signal.from, setTimeout(() => this.remoteStopped(signal.from), this.expireMs));
      if (!had) this.emit('change', this.users);
    } else {
      this.remoteStopped(signal.from);
    }
  }

  /** @internal */
  remoteStopped(user: string): void {
    const timer = this.remote.get(user);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.remote.delete(user);
    this.emit('change', this.users);
  }

  /** @internal */
  dispose(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    for (const timer of this.remote.values()) clearTimeout(timer);
    this.remote.clear();
  }
}
