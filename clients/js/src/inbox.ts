/**
 * The inbox (docs/protocol.md §10.11, The inbox): the user's conversations with unread counts and
 * their last message, from the `inbox.list` RPC, kept current by `inbox` signals on
 * `user:<me>` (an entry's new state plus the `total`, or `{ch, removed: true, total}`).
 *
 * Signals reach only connections subscribed to `user:<me>`, so a watched inbox holds that
 * subscription (filtered to the type `inbox`, which no stored event has: it carries the
 * signals and nothing else unless the app subscribes to more). Signals are not stored: every
 * time that subscription is confirmed (the first time and after each reconnect) the first
 * page is read again.
 */

import { Emitter } from './emitter.js';
import type { ChannelEvent, InboxEntry, InboxPage, InboxState, InboxUpdate, Signal, SubscribeOptions } from './types.js';

/** What the inbox needs from the client. */
export interface InboxHost {
  rpc<R>(method: string, params: unknown): Promise<R>;
  subscribe(ch: string, options: SubscribeOptions, handler: (event: ChannelEvent) => void): () => void;
  /** Calls `listener` with the user once known (at once if it is). */
  whenUser(listener: (user: string) => void): void;
}

export interface InboxEvents {
  /** The kept state changed (a page arrived, a signal, a mute). */
  change: InboxState;
  /** An `inbox` signal as it arrived, before it is applied. */
  update: InboxUpdate;
  /** Reading `inbox.list` failed (the state stays as it was). */
  error: unknown;
}

/**
 * A page read while signals arrived may be older than they are: it is read again, at most
 * this many times, before the signals that arrived meanwhile are applied on top of it.
 */
const REREADS = 2;

export class Inbox extends Emitter<InboxEvents> {
  private readonly entries = new Map<string, InboxEntry>();
  private total = 0;
  private next: string | null = null;
  private ready = false;
  private limit: number | undefined;
  private watching = 0;
  private unsubscribe: (() => void) | undefined;
  /** Bumped by every refresh: an answer to an older one is dropped. */
  private refreshes = 0;
  /** Signals applied while a refresh was waiting for its page. */
  private arrivedDuringRefresh: InboxUpdate[] | undefined;

  constructor(private readonly host: InboxHost) {
    super();
  }

  /** The kept state (empty until `watch` has read the first page). */
  get state(): InboxState {
    const conversations = [...this.entries.values()].sort(byActivity);
    return { conversations, entries: new Map(this.entries), total: this.total, hasMore: this.next !== null, ready: this.ready };
  }

  /** One page of `inbox.list`, most recent activity first. */
  async list(params: { limit?: number; before?: string } = {}): Promise<InboxPage> {
    checkLimit('inbox.list', params.limit);
    if (params.before !== undefined && (typeof params.before !== 'string' || params.before.length === 0)) {
      throw new TypeError('inbox.list: before must be the next cursor of the previous page');
    }
    const wire: Record<string, unknown> = {};
    if (params.limit !== undefined) wire.limit = params.limit;
    if (params.before !== undefined) wire.before = params.before;
    return this.host.rpc<InboxPage>('inbox.list', wire);
  }

  /**
   * Mutes (or unmutes) a conversation; resolves with its entry, applied to the kept state
   * with the total the answer carries.
   * Throws at once on arguments that are not a conversation and a boolean.
   */
  mute(ch: string, muted = true): Promise<InboxEntry> {
    if (typeof ch !== 'string' || !/^conversation:./.test(ch)) throw new TypeError('inbox.mute needs a conversation channel (conversation:<id>)');
    if (typeof muted !== 'boolean') throw new TypeError('inbox.mute: muted must be true or false');
    return this.host.rpc<InboxEntry & { total?: number }>('inbox.mute', { ch, muted }).then((answer) => {
      const { total, ...entry } = answer;
      const old = this.entries.get(ch);
      if (old && entry.ch === ch) {
        // The answer carries the new total; a server without it gets ours adjusted.
        this.total = typeof total === 'number' ? total : this.total + counted(entry) - counted(old);
        this.entries.set(ch, entry);
        this.changed();
      }
      return entry;
    });
  }

  /**
   * Keeps `state` current (first page, then signals, the first page again after every
   * reconnect) and calls `listener` with it now and on every change. Returns the function
   * that stops; when the last watcher stops, the subscription to `user:<me>` ends.
   */
  watch(listener: (state: InboxState) => void, options: { limit?: number } = {}): () => void {
    if (typeof listener !== 'function') throw new TypeError('inbox.watch needs a listener');
    checkLimit('inbox.watch', options.limit);
    const off = this.on('change', listener);
    if (this.watching++ === 0) {
      this.limit = options.limit;
      this.start();
    }
    listener(this.state);
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      off();
      if (--this.watching === 0) this.stop();
    };
  }

  /** Reads the first page again (the SDK does so by itself on every reconnect). */
  async refresh(): Promise<void> {
    const generation = ++this.refreshes;
    for (let reread = 0; ; reread++) {
      const arrived: InboxUpdate[] = [];
      this.arrivedDuringRefresh = arrived;
      let page: InboxPage;
      try {
        page = await this.list(this.limit === undefined ? {} : { limit: this.limit });
      } catch (error) {
        if (generation === this.refreshes) {
          this.arrivedDuringRefresh = undefined;
          this.emit('error', error);
        }
        return;
      }
      if (generation !== this.refreshes || this.watching === 0) return;
      if (arrived.length > 0 && reread < REREADS) continue;
      this.arrivedDuringRefresh = undefined;
      this.entries.clear();
      for (const entry of page.conversations ?? []) this.entries.set(entry.ch, entry);
      this.total = typeof page.unread === 'number' ? page.unread : 0;
      this.next = page.next ?? null;
      this.ready = true;
      for (const update of arrived) this.apply(update);
      this.changed();
      return;
    }
  }

  /** Reads the next (older) page into `state`. */
  async loadMore(limit?: number): Promise<void> {
    if (this.next === null) return;
    const cursor = this.next;
    const page = await this.list(limit === undefined ? { before: cursor } : { before: cursor, limit });
    if (this.next !== cursor) return; // a refresh replaced the pages meanwhile
    for (const entry of page.conversations ?? []) if (!this.entries.has(entry.ch)) this.entries.set(entry.ch, entry);
    this.next = page.next ?? null;
    this.changed();
  }

  private start(): void {
    this.host.whenUser((user) => {
      if (this.watching === 0 || this.unsubscribe) return;
      const ch = `user:${user}`;
      this.unsubscribe = this.host.subscribe(
        ch,
        {
          types: ['inbox'],
          onSubscribed: () => void this.refresh(),
          onSignal: (signal) => this.onSignal(ch, signal),
          onError: (error) => this.emit('error', error),
        },
        () => undefined,
      );
    });
  }

  private stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.refreshes++;
    this.arrivedDuringRefresh = undefined;
    this.entries.clear();
    this.total = 0;
    this.next = null;
    this.ready = false;
  }

  private onSignal(ch: string, signal: Signal): void {
    if (signal.type !== 'inbox' || signal.ch !== ch) return;
    const update = parseUpdate(signal.data);
    if (!update) return;
    this.emit('update', update);
    if (this.arrivedDuringRefresh) this.arrivedDuringRefresh.push(update);
    if (!this.ready) return;
    this.apply(update);
    this.changed();
  }

  private apply(update: InboxUpdate): void {
    this.total = update.total;
    if (update.removed) {
      this.entries.delete(update.ch);
      return;
    }
    const { total: _total, removed: _removed, ...entry } = update;
    // An entry older than every loaded one belongs to a page not read yet.
    if (!this.entries.has(entry.ch) && this.next !== null && this.isOlderThanLoaded(entry)) return;
    this.entries.set(entry.ch, entry);
  }

  private isOlderThanLoaded(entry: InboxEntry): boolean {
    for (const known of this.entries.values()) if (byActivity(entry, known) < 0) return false;
    return true;
  }

  private changed(): void {
    this.emit('change', this.state);
  }
}

/** Newest activity first; ties in channel order so the list does not jump. */
function byActivity(a: InboxEntry, b: InboxEntry): number {
  const at = Date.parse(a.updatedAt);
  const bt = Date.parse(b.updatedAt);
  if (at !== bt) return (Number.isNaN(bt) ? 0 : bt) - (Number.isNaN(at) ? 0 : at);
  return a.ch < b.ch ? -1 : a.ch > b.ch ? 1 : 0;
}

/** What an entry adds to the total. */
function counted(entry: InboxEntry): number {
  return entry.muted ? 0 : entry.unread;
}

function checkLimit(what: string, limit: unknown): void {
  if (limit !== undefined && (!Number.isInteger(limit) || (limit as number) < 1)) {
    throw new TypeError(`${what}: limit must be a positive integer, not ${String(limit)}`);
  }
}

/** A signal's data as an update, or undefined when it is not one (it is then ignored). */
function parseUpdate(data: unknown): InboxUpdate | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const d = data as Record<string, unknown>;
  if (typeof d.ch !== 'string' || typeof d.total !== 'number') return undefined;
  if (d.removed === true) return { ch: d.ch, removed: true, total: d.total };
  if (typeof d.unread !== 'number' || typeof d.updatedAt !== 'string') return undefined;
  return data as InboxUpdate;
}
