/**
 * The inbox (docs/protocol.md, Inbox): the user's conversations with unread counts and
 * their last message, from the `inbox.list` RPC, kept current by `inbox` signals on
 * `user:<me>` (an entry's new state plus the `total`, or `{ch, removed: true}`). The
 * list is fetched again on every (re)connection, since signals are not stored.
 */

import { Emitter } from './emitter.js';
import type { InboxEntry, InboxPage, Signal } from './types.js';

export interface InboxHost {
  rpc<R>(method: string, params: unknown): Promise<R>;
  /** Calls `listener` on every signal; returns the function that stops. */
  onSignal(listener: (signal: Signal) => void): () => void;
  /** Calls `listener` on every new connection; returns the function that stops. */
  onConnected(listener: () => void): () => void;
  user(): string | undefined;
  connected(): boolean;
}

export interface InboxState {
  /** Most recent activity first. */
  conversations: InboxEntry[];
  /** The sum of unread over unmuted conversations. */
  unread: number;
  /** Whether there are older conversations (`loadMore`). */
  hasMore: boolean;
}

export class Inbox extends Emitter<{ change: InboxState; error: unknown }> {
  private entries: InboxEntry[] = [];
  private unread = 0;
  private next: string | null = null;
  private watching = 0;
  private stop: Array<() => void> = [];

  constructor(private readonly host: InboxHost) {
    super();
  }

  get state(): InboxState {
    return { conversations: [...this.entries], unread: this.unread, hasMore: this.next !== null };
  }

  /** One page of `inbox.list`. */
  list(params: { limit?: number; before?: string } = {}): Promise<InboxPage> {
    if (params.limit !== undefined && (!Number.isInteger(params.limit) || params.limit < 1)) {
      throw new TypeError(`inbox.list: limit must be a positive integer, not ${String(params.limit)}`);
    }
    return this.host.rpc<InboxPage>('inbox.list', params);
  }

  /** Mutes or unmutes a conversation; resolves with its entry. */
  mute(ch: string, muted = true): Promise<InboxEntry> {
    if (typeof ch !== 'string' || !ch.startsWith('conversation:')) throw new TypeError('inbox.mute needs a conversation channel (conversation:<id>)');
    return this.host.rpc<InboxEntry>('inbox.mute', { ch, muted });
  }

  /**
   * Keeps `state` current (first page, then signals) and calls `listener` on every change.
   * Returns the function that stops; the last one to stop ends the watch.
   */
  watch(listener: (state: InboxState) => void, options: { limit?: number } = {}): () => void {
    const off = this.on('change', listener);
    if (this.watching++ === 0) {
      this.stop.push(this.host.onSignal((signal) => this.onSignal(signal)));
      this.stop.push(this.host.onConnected(() => void this.refresh(options.limit)));
      if (this.host.connected()) void this.refresh(options.limit);
    } else {
      listener(this.state);
    }
    return () => {
      off();
      if (--this.watching === 0) this.stop.splice(0).forEach((stop) => stop());
    };
  }

  /** Fetches the next (older) page into `state`. */
  async loadMore(limit?: number): Promise<void> {
    if (this.next === null) return;
    const page = await this.list(limit === undefined ? { before: this.next } : { before: this.next, limit });
    const known = new Set(this.entries.map((e) => e.ch));
    this.entries.push(...page.conversations.filter((e) => !known.has(e.ch)));
    this.next = page.next;
    this.emit('change', this.state);
  }

  private async refresh(limit?: number): Promise<void> {
    try {
      const page = await this.list(limit === undefined ? {} : { limit });
      this.entries = page.conversations;
      this.unread = page.unread;
      this.next = page.next;
      this.emit('change', this.state);
    } catch (error) {
      this.emit('error', error);
    }
  }

  private onSignal(signal: Signal): void {
    const me = this.host.user();
    if (signal.type !== 'inbox' || !me || signal.ch !== `user:${me}`) return;
    const data = signal.data as (Partial<InboxEntry> & { ch?: string; removed?: boolean; total?: number }) | null;
    if (!data || typeof data.ch !== 'string') return;
    const at = this.entries.findIndex((e) => e.ch === data.ch);
    if (data.removed) {
      if (at >= 0) this.entries.splice(at, 1);
    } else {
      const { total: _total, removed: _removed, ...entry } = data;
      const old = at >= 0 ? this.entries[at] : undefined;
      const merged = { ...old, ...entry } as InboxEntry;
      if (at >= 0) this.entries.splice(at, 1);
      // Activity (a newer updatedAt) moves an entry up; edits, reads and mutes keep its place.
      if (old && old.updatedAt === merged.updatedAt) this.entries.splice(at, 0, merged);
      else this.entries.splice(this.insertAt(merged), 0, merged);
    }
    if (typeof data.total === 'number') this.unread = data.total;
    this.emit('change', this.state);
  }

  private insertAt(entry: InboxEntry): number {
    const at = this.entries.findIndex((e) => e.updatedAt < entry.updatedAt);
    return at < 0 ? this.entries.length : at;
  }
}
