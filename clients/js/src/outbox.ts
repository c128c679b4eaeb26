/**
 * Publishing: each message gets an idempotency key and a status the UI can render
 * (sending -> sent -> delivered -> read, or failed). Messages not yet acknowledged are
 * kept in a storage adapter, so a page reload or a crash does not lose them; they are
 * sent, in order, one at a time, whenever a connection is up. A retry reuses the key, so
 * the edge stores the message once however often it is sent (docs/protocol.md §4.4).
 */

import { Emitter } from './emitter.js';
import { SwitchboardError } from './errors.js';
import type { MessageStatus, StorageAdapter } from './types.js';
import { backoffDelay, randomKey } from './util.js';

const RANK: Record<MessageStatus, number> = { sending: 0, sent: 1, delivered: 2, read: 3, failed: -1 };

/** What is persisted per queued message. */
interface StoredEntry {
  key: string;
  ch: string;
  type: string;
  data: unknown;
  createdAt: string;
  user?: string;
  trace?: string;
}

export class OutgoingMessage<D = unknown> extends Emitter<{ status: MessageStatus }> {
  status: MessageStatus = 'sending';
  /** The stream seq, once sent. */
  seq?: number;
  /** The envelope id, once sent: the `event.id` of the `evt` every subscriber gets. */
  eventId?: string;
  /** Why it failed, when it did. */
  error?: SwitchboardError;
  /** Whether it was restored from storage (queued before a reload). */
  restored = false;
  /** The W3C `traceparent` the message is published with, if any. */
  trace?: string;

  constructor(
    readonly key: string,
    readonly ch: string,
    readonly type: string,
    readonly data: D,
    readonly createdAt: string,
    readonly user: string | undefined,
    private readonly outbox: Outbox,
  ) {
    super();
  }

  /** Sends a failed message again, with the same key. */
  retry(): void {
    if (this.status !== 'failed') return;
    this.error = undefined;
    this.setStatus('sending');
    this.outbox.requeue(this);
  }

  /** Resolves once the message is stored on the server (status `sent` or later). */
  sent(): Promise<this> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        if (RANK[this.status] >= RANK.sent) {
          resolve(this);
          return true;
        }
        if (this.status === 'failed') {
          reject(this.error ?? new SwitchboardError('internal', 'publish failed'));
          return true;
        }
        return false;
      };
      if (check()) return;
      const off = this.on('status', () => {
        if (check()) off();
      });
    });
  }

  /** Moves the status forward (never back, except failed -> sending by `retry`). */
  setStatus(status: MessageStatus): void {
    if (status === this.status) return;
    if (status !== 'failed' && status !== 'sending' && RANK[status] < RANK[this.status]) return;
    this.status = status;
    this.emit('status', status);
  }

  toJSON(): StoredEntry {
    return { key: this.key, ch: this.ch, type: this.type, data: this.data, createdAt: this.createdAt, user: this.user, trace: this.trace };
  }
}

/** What the outbox needs from the client. */
export interface OutboxHost {
  /** The connected user, or undefined while not connected over WebSocket. */
  readyUser(): string | undefined;
  publishFrame(message: OutgoingMessage): Promise<{ seq: number; event_id: string }>;
  added(message: OutgoingMessage): void;
  sent(message: OutgoingMessage): void;
}

export class Outbox {
  private queue: OutgoingMessage[] = [];
  private flushing = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;
  /** Resolves once stored messages are loaded. */
  readonly ready: Promise<void>;

  constructor(
    private readonly host: OutboxHost,
    private readonly storage: StorageAdapter,
    private readonly storageKey: string,
    private readonly random: () => number,
  ) {
    this.ready = this.load();
  }

  private async load(): Promise<void> {
    let text: string | null = null;
    try {
      text = await this.storage.getItem(this.storageKey);
    } catch {
      return;
    }
    if (!text) return;
    let entries: StoredEntry[];
    try {
      entries = JSON.parse(text) as StoredEntry[];
    } catch {
      return;
    }
    if (!Array.isArray(entries)) return;
    for (const entry of entries) {
      if (this.queue.some((m) => m.key === entry.key)) continue;
      const message = new OutgoingMessage(entry.key, entry.ch, entry.type, entry.data, entry.createdAt, entry.user, this);
      message.restored = true;
      if (typeof entry.trace === 'string') message.trace = entry.trace;
      this.queue.push(message);
      this.host.added(message);
    }
  }

  /** Queues a new message and tries to send it. */
  add<D>(ch: string, type: string, data: D, key: string | undefined, user: string | undefined, trace?: string): OutgoingMessage<D> {
    const existing = key ? this.queue.find((m) => m.key === key) : undefined;
    if (existing) return existing as OutgoingMessage<D>;
    const message = new OutgoingMessage<D>(key ?? randomKey(this.random), ch, type, data, new Date().toISOString(), user, this);
    if (trace !== undefined) message.trace = trace;
    this.queue.push(message);
    this.host.added(message);
    void this.persist();
    this.kick();
    return message;
  }

  /** Messages not yet acknowledged by the server, oldest first. */
  pending(): OutgoingMessage[] {
    return this.queue.filter((m) => m.status === 'sending');
  }

  requeue(message: OutgoingMessage): void {
    if (!this.queue.includes(message)) this.queue.push(message);
    void this.persist();
    this.kick();
  }

  /** Tries to send what is queued (called on every new connection, too). */
  kick(): void {
    if (this.closed || this.flushing) return;
    void this.flush();
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      await this.ready;
      for (;;) {
        if (this.closed) return;
        const user = this.host.readyUser();
        if (!user) return;
        // Messages queued by another user on this device wait for that user.
        const next = this.queue.find((m) => m.status === 'sending' && (m.user === undefined || m.user === user));
        if (!next) return;
        try {
          const ok = await this.host.publishFrame(next);
          next.seq = ok.seq;
          next.eventId = ok.event_id;
          this.attempt = 0;
          this.remove(next);
          next.setStatus('sent');
          this.host.sent(next);
        } catch (error) {
          const err = error instanceof SwitchboardError ? error : new SwitchboardError('internal', String(error));
          if (err.retryable) {
            // Wait and try again; a new connection kicks the queue sooner.
            const delay = backoffDelay(this.attempt++, { initialMs: 1000, maxMs: 30_000 }, this.random);
            if (this.retryTimer) clearTimeout(this.retryTimer);
            this.retryTimer = setTimeout(() => this.kick(), delay);
            return;
          }
          next.error = err;
          this.remove(next);
          next.setStatus('failed');
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  private remove(message: OutgoingMessage): void {
    this.queue = this.queue.filter((m) => m !== message);
    void this.persist();
  }

  private async persist(): Promise<void> {
    const entries = this.queue.filter((m) => m.status === 'sending').map((m) => m.toJSON());
    try {
      if (entries.length === 0) await this.storage.removeItem(this.storageKey);
      else await this.storage.setItem(this.storageKey, JSON.stringify(entries));
    } catch {
      // A full or broken storage loses only the reload-safety, not the message.
    }
  }
}
