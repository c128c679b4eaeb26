/**
 * Receipts: this device's cumulative `ack` / `read` cursors per conversation (sent only
 * when they move, and again after a reconnect), the cursors other participants reported
 * (`message.receipt` events), and the statuses they give to this user's sent messages
 * (docs/protocol.md, Receipts).
 */

import type { OutgoingMessage } from './outbox.js';
import type { ClientFrame, ReceiptData, ReceiptUpdate } from './types.js';

export interface ReceiptsHost {
  /** Sends a frame that has no reply; false when not connected. */
  fire(frame: ClientFrame): boolean;
  /** The current user. */
  me(): string | undefined;
  announce(update: ReceiptUpdate): void;
}

interface OwnCursor {
  ack: number;
  read: number;
  sentAck: number;
  sentRead: number;
}

/** Sent messages remembered per conversation, for their delivered/read statuses. */
const SENT_KEPT = 500;

export class Receipts {
  private readonly seen = new Map<string, Map<string, { delivered: number; read: number }>>();
  private readonly own = new Map<string, OwnCursor>();
  private readonly sentMessages = new Map<string, OutgoingMessage[]>();

  constructor(private readonly host: ReceiptsHost) {}

  /** A `message.receipt` event. */
  apply(ch: string, data: ReceiptData, announce = true): void {
    let state = this.seen.get(ch);
    if (!state) {
      state = new Map();
      this.seen.set(ch, state);
    }
    const old = state.get(data.user) ?? { delivered: 0, read: 0 };
    const read = Math.max(old.read, data.read ?? 0);
    const delivered = Math.max(old.delivered, data.delivered ?? 0, read);
    state.set(data.user, { delivered, read });
    if (data.user !== this.host.me()) {
      for (const message of this.sentMessages.get(ch) ?? []) {
        if (message.seq === undefined) continue;
        if (message.seq <= read) message.setStatus('read');
        else if (message.seq <= delivered) message.setStatus('delivered');
      }
    }
    if (announce) this.host.announce({ ch, user: data.user, delivered, read });
  }

  /** A message of this user was stored: later receipts (or earlier ones) move its status. */
  messageSent(message: OutgoingMessage): void {
    let list = this.sentMessages.get(message.ch);
    if (!list) {
      list = [];
      this.sentMessages.set(message.ch, list);
    }
    list.push(message);
    if (list.length > SENT_KEPT) list.shift();
    const state = this.seen.get(message.ch);
    if (state) for (const [user, cursors] of state) this.apply(message.ch, { user, ...cursors }, false);
  }

  /** The cursors seen on a conversation, per user. */
  of(ch: string): Map<string, { delivered: number; read: number }> {
    return new Map(this.seen.get(ch) ?? []);
  }

  ack(ch: string, seq: number): void {
    checkSeq(seq);
    const cursor = this.cursorOf(ch);
    if (seq <= cursor.ack || seq <= cursor.read) return;
    cursor.ack = seq;
    this.flush();
  }

  read(ch: string, seq: number): void {
    checkSeq(seq);
    const cursor = this.cursorOf(ch);
    if (seq <= cursor.read) return;
    cursor.read = seq;
    this.flush();
  }

  /** Sends the cursors that moved since they were last sent (called on every new connection too). */
  flush(): void {
    for (const [ch, cursor] of this.own) {
      if (cursor.read > cursor.sentRead) {
        if (this.host.fire({ op: 'read', ch, seq: cursor.read })) {
          cursor.sentRead = cursor.read;
          cursor.sentAck = Math.max(cursor.sentAck, cursor.read);
        }
      }
      if (cursor.ack > cursor.sentAck) {
        if (this.host.fire({ op: 'ack', ch, seq: cursor.ack })) cursor.sentAck = cursor.ack;
      }
    }
  }

  private cursorOf(ch: string): OwnCursor {
    let cursor = this.own.get(ch);
    if (!cursor) {
      cursor = { ack: 0, read: 0, sentAck: 0, sentRead: 0 };
      this.own.set(ch, cursor);
    }
    return cursor;
  }
}

function checkSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 0) throw new TypeError(`a receipt needs a seq (a non-negative integer), not ${String(seq)}`);
}
