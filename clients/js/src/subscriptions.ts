/**
 * Subscriptions: per channel spelling, the server subscription shared by all of its
 * listeners, its resume cursor and de-duplication, and dispatch to the listeners.
 *
 * Exactly-once to the app: per subscription the edge delivers in ascending seq order
 * without gaps or duplicates; across reconnects the client resubscribes with
 * `since: {seq: <last seq processed>, epoch}` and drops anything at or below that seq,
 * and anything whose event id it has already seen (a re-published event).
 */

import type { RequestCallbacks } from './connection.js';
import { reportListenerError } from './emitter.js';
import { SwitchboardError } from './errors.js';
import type { ChannelEvent, ClientFrame, ClientStats, GapInfo, ServerFrame, Signal, Since, SubscribeOptions, Transport } from './types.js';
import { RecentSet, backoffDelay, typesMatch } from './util.js';

/** What subscriptions need from the connection. */
export interface SubscriptionTransport {
  readonly isUp: boolean;
  readonly transport: Transport | undefined;
  requestNow(frame: ClientFrame, reply: RequestCallbacks, timeoutMs?: number): number;
  fire(frame: ClientFrame, withId?: boolean): boolean;
  reopenSse(): void;
}

/** What subscriptions tell the rest of the client. */
export interface SubscriptionHost {
  /** Every event delivered, before the listeners see it (receipts, typing, auto-ack). */
  delivered(event: ChannelEvent): void;
  /** A refused subscription whose listeners have no `onError`. */
  error(error: SwitchboardError): void;
}

interface Listener {
  types: string[] | undefined;
  handler: (event: ChannelEvent) => void;
  options: SubscribeOptions;
}

/** One channel spelling as the client keeps it, shared by all its listeners. */
class ChannelSub {
  readonly listeners = new Set<Listener>();
  phase: 'idle' | 'subscribing' | 'live' | 'ended' = 'idle';
  requestId: number | undefined;
  sentSince: Since | undefined;
  epoch: string | undefined;
  /** Seq of the last event processed; the resume point. */
  cursor: number | undefined;
  /** Highest seq delivered in this epoch: anything at or below is a duplicate. */
  lastSeq = 0;
  readonly ids = new RecentSet<string>(2000);
  /** Whether the current SSE cursor covers this channel. */
  inSseCursor = false;
  retryTimer: ReturnType<typeof setTimeout> | undefined;
  retryAttempt = 0;

  constructor(
    readonly ch: string,
    readonly initialSince: Since | undefined,
  ) {}

  /** The types the server subscription needs: the union of the listeners'. */
  serverTypes(): string[] | undefined {
    const union = new Set<string>();
    for (const listener of this.listeners) {
      if (!listener.types || listener.types.length === 0 || listener.types.includes('*')) return undefined;
      for (const t of listener.types) union.add(t);
    }
    // Conversations always carry receipts, for message statuses.
    if (this.ch.startsWith('conversation:')) union.add('message.receipt');
    return [...union].sort();
  }

  since(): Since | undefined {
    if (this.cursor !== undefined && this.epoch !== undefined) return { seq: this.cursor, epoch: this.epoch };
    return this.initialSince;
  }
}

export class Subscriptions {
  private readonly channels = new Map<string, ChannelSub>();

  constructor(
    private readonly link: SubscriptionTransport,
    private readonly host: SubscriptionHost,
    private readonly stats: ClientStats,
    private readonly random: () => number,
    private readonly requestTimeoutMs: number,
  ) {}

  add(ch: string, options: SubscribeOptions, handler: (event: ChannelEvent) => void): () => void {
    if (typeof ch !== 'string' || ch.length === 0) throw new TypeError('subscribe needs a channel name such as "project:p1"');
    if (typeof handler !== 'function') throw new TypeError('subscribe needs a handler');
    if (options.types !== undefined && (!Array.isArray(options.types) || options.types.some((t) => typeof t !== 'string'))) {
      throw new TypeError('subscribe: types must be an array of strings');
    }
    let sub = this.channels.get(ch);
    if (!sub || sub.phase === 'ended') {
      sub = new ChannelSub(ch, options.since);
      this.channels.set(ch, sub);
    }
    const listener: Listener = { types: options.types, handler, options };
    const before = sub.serverTypes();
    sub.listeners.add(listener);
    const after = sub.serverTypes();
    const target = sub;
    if (sub.phase === 'idle') this.send(sub);
    else if (sub.phase !== 'ended' && !sameTypes(before, after)) this.resubscribe(sub);
    else if (sub.phase === 'live') this.joinedLive(sub, listener);
    return () => {
      if (!target.listeners.delete(listener)) return;
      if (target.listeners.size === 0) {
        if (target.phase === 'subscribing' || target.phase === 'live') {
          if (this.link.transport === 'sse') this.link.reopenSse();
          else this.link.fire({ op: 'unsub', ch: target.ch }, true);
        }
        target.phase = 'ended';
        if (target.retryTimer) clearTimeout(target.retryTimer);
        if (this.channels.get(target.ch) === target) this.channels.delete(target.ch);
      }
    };
  }

  position(ch: string): { seq: number; epoch: string } | undefined {
    const sub = this.channels.get(ch);
    return sub && sub.cursor !== undefined && sub.epoch !== undefined ? { seq: sub.cursor, epoch: sub.epoch } : undefined;
  }

  /** A new WebSocket link: subscribe everything again, from each channel's cursor. */
  linkUp(transport: Transport): void {
    if (transport === 'websocket') for (const sub of this.channels.values()) this.send(sub);
  }

  /** The link is gone: every subscription waits for the next one. */
  linkDown(): void {
    for (const sub of this.channels.values()) {
      if (sub.phase !== 'ended') sub.phase = 'idle';
      if (sub.retryTimer) clearTimeout(sub.retryTimer);
      sub.retryTimer = undefined;
    }
  }

  /** The channels a new SSE stream carries; they count as being subscribed until its `ok`. */
  sseChannels(): string[] {
    const out: string[] = [];
    for (const sub of this.channels.values()) {
      if (sub.phase === 'ended' || sub.listeners.size === 0) continue;
      out.push(sub.ch);
      sub.phase = 'subscribing';
      sub.requestId = undefined;
    }
    return out;
  }

  /** Ends a subscription the server refused or revoked. */
  refused(ch: string, error: SwitchboardError): void {
    const sub = this.channels.get(ch);
    if (sub) this.end(sub, error);
  }

  /** An SSE stream's `ok` for one of its channels. */
  sseSubscribed(frame: ServerFrame): void {
    const sub = frame.ch ? this.channels.get(frame.ch) : undefined;
    if (sub && sub.phase === 'subscribing') this.subscribed(sub, frame, true);
  }

  /** An `evt` frame: dropped if already seen, else delivered once to the matching listeners. */
  event(frame: ServerFrame): void {
    const { ch, seq, event } = frame;
    if (!ch || seq === undefined || !event) return;
    const sub = this.channels.get(ch);
    if (!sub || sub.phase === 'ended') return;
    if (seq <= sub.lastSeq) {
      this.stats.duplicatesDropped++;
      return;
    }
    sub.lastSeq = seq;
    sub.cursor = seq;
    if (sub.ids.has(event.id)) {
      this.stats.duplicatesDropped++;
      return;
    }
    sub.ids.add(event.id);
    const delivery: ChannelEvent = { ch, seq, event };
    this.host.delivered(delivery);
    this.stats.eventsDelivered++;
    for (const listener of [...sub.listeners]) {
      if (!typesMatch(listener.types, event.type)) continue;
      try {
        listener.handler(delivery);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }

  /** A signal, to the `onSignal` of the channel's listeners. */
  signal(signal: Signal): void {
    const sub = this.channels.get(signal.ch);
    if (!sub) return;
    for (const listener of [...sub.listeners]) {
      if (!listener.options.onSignal) continue;
      try {
        listener.options.onSignal(signal);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }

  private send(sub: ChannelSub): void {
    if (sub.phase !== 'idle' || sub.listeners.size === 0) return;
    if (!this.link.isUp) return;
    if (this.link.transport === 'sse') {
      this.link.reopenSse();
      return;
    }
    const frame: ClientFrame = { op: 'sub', ch: sub.ch };
    const types = sub.serverTypes();
    if (types) frame.types = types;
    const since = sub.since();
    if (since) frame.since = since;
    sub.phase = 'subscribing';
    sub.sentSince = since;
    const id = this.link.requestNow(
      frame,
      {
        resolve: (ok) => {
          if (sub.requestId === id) this.subscribed(sub, ok, false);
        },
        reject: (error) => {
          if (sub.requestId !== id || error.code === 'disconnected' || error.code === 'closed') return;
          if (error.retryable) this.retry(sub);
          else this.end(sub, error);
        },
      },
      this.requestTimeoutMs,
    );
    sub.requestId = id;
  }

  private retry(sub: ChannelSub): void {
    sub.phase = 'idle';
    sub.requestId = undefined;
    const delay = backoffDelay(sub.retryAttempt++, { initialMs: 1000, maxMs: 15_000 }, this.random);
    if (sub.retryTimer) clearTimeout(sub.retryTimer);
    sub.retryTimer = setTimeout(() => {
      sub.retryTimer = undefined;
      if (sub.phase === 'idle') this.send(sub);
    }, delay);
  }

  private resubscribe(sub: ChannelSub): void {
    if (this.link.transport === 'sse') return; // SSE subscribes to every type already.
    if (sub.phase === 'subscribing' || sub.phase === 'live') this.link.fire({ op: 'unsub', ch: sub.ch }, true);
    sub.phase = 'idle';
    this.send(sub);
  }

  private subscribed(sub: ChannelSub, ok: ServerFrame, overSse: boolean): void {
    const seq = ok.seq ?? 0;
    const epoch = ok.epoch ?? '';
    const recovered = ok.recovered !== false;
    sub.phase = 'live';
    sub.requestId = undefined;
    sub.retryAttempt = 0;
    let since = sub.sentSince;
    let gap: GapInfo['reason'] | undefined;
    if (overSse) {
      // Over SSE, the stream's cursor resumes only channels it already carried.
      since = sub.inSseCursor && sub.cursor !== undefined && sub.epoch !== undefined ? { seq: sub.cursor, epoch: sub.epoch } : undefined;
      if (!since && sub.cursor !== undefined) gap = 'transport_changed';
      sub.inSseCursor = true;
    }
    const resumed = since !== undefined;
    if (since && 'seq' in since && since.epoch !== epoch) {
      gap = 'epoch_changed';
      sub.lastSeq = 0;
      sub.cursor = seq;
    } else if (!since || gap === 'transport_changed') {
      // A fresh start: live from the channel's head.
      sub.cursor = seq;
      sub.lastSeq = Math.max(sub.lastSeq, seq);
    } else if (!recovered) {
      gap = 'not_recovered';
    }
    sub.epoch = epoch;
    for (const listener of [...sub.listeners]) {
      try {
        listener.options.onSubscribed?.({ seq, epoch, recovered: recovered && !gap, resumed });
        if (gap) listener.options.onGap?.({ ch: sub.ch, reason: gap, seq, epoch });
      } catch (error) {
        reportListenerError(error);
      }
    }
  }

  /** A listener that joins a live subscription learns it is subscribed, as the others did. */
  private joinedLive(sub: ChannelSub, listener: Listener): void {
    const { onSubscribed } = listener.options;
    if (!onSubscribed) return;
    const seq = sub.cursor ?? 0;
    const epoch = sub.epoch ?? '';
    queueMicrotask(() => {
      if (sub.phase !== 'live' || !sub.listeners.has(listener)) return;
      try {
        onSubscribed({ seq, epoch, recovered: true, resumed: false });
      } catch (error) {
        reportListenerError(error);
      }
    });
  }

  private end(sub: ChannelSub, error: SwitchboardError): void {
    sub.phase = 'ended';
    if (this.channels.get(sub.ch) === sub) this.channels.delete(sub.ch);
    for (const listener of [...sub.listeners]) {
      try {
        if (listener.options.onError) listener.options.onError(error);
        else this.host.error(error);
      } catch (e) {
        reportListenerError(e);
      }
    }
  }
}

function sameTypes(a: string[] | undefined, b: string[] | undefined): boolean {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((t, i) => t === b[i]);
}
