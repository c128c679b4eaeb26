/**
 * The Switchboard client: the facade an app holds. It wires together the parts, each in
 * its own file, and adds nothing but argument checks:
 *
 * - connection.ts: the state machine, edges and transports, tokens, request/reply;
 * - subscriptions.ts: channels, resume cursors, de-duplication, dispatch;
 * - receipts.ts: ack/read cursors and message statuses;
 * - outbox.ts: publishing with idempotency keys and the offline queue;
 * - presence.ts, autoaway.ts, notifications.ts, inbox.ts, push.ts, typing.ts: feature
 *   helpers, each given a narrow host interface rather than the whole client;
 * - search.ts: the argument checks of `messages.search`.
 */

import { AutoAway } from './autoaway.js';
import { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { SwitchboardError } from './errors.js';
import { Inbox } from './inbox.js';
import { Notifications } from './notifications.js';
import { Outbox, OutgoingMessage } from './outbox.js';
import { Presence } from './presence.js';
import { Push } from './push.js';
import { Receipts } from './receipts.js';
import { search } from './search.js';
import { defaultStorage } from './storage.js';
import { Subscriptions } from './subscriptions.js';
import { Typing } from './typing.js';
import type {
  AppState,
  ChannelEvent,
  ClientFrame,
  ClientStats,
  ConnectionState,
  HistoryPage,
  ReceiptData,
  ReceiptUpdate,
  SearchOptions,
  SearchPage,
  ServerFrame,
  Signal,
  StateChange,
  SubscribeOptions,
  SwitchboardOptions,
  TokenProvider,
  Transport,
  TypingOptions,
} from './types.js';
import { defaultRandom, tokenClaims } from './util.js';

export interface ClientEvents {
  state: StateChange;
  /** Round-trip time of the latest `ping`, in ms. */
  latency: number;
  welcome: { user: string; session: string; heartbeatMs: number; url: string };
  /** An error not tied to a call (a refused signal, an unavailable presence). */
  error: SwitchboardError;
  /** A message was queued (by `publish`, or restored from storage). */
  message: OutgoingMessage;
  receipt: ReceiptUpdate;
  signal: Signal;
}

const DEFAULT_IDLE_AFTER_MS = 300_000;

export class Switchboard extends Emitter<ClientEvents> {
  /** Counters useful in tests and dashboards. */
  readonly stats: ClientStats = { duplicatesDropped: 0, reconnects: 0, eventsDelivered: 0 };
  readonly notifications: Notifications;
  readonly presence: Presence;
  readonly inbox: Inbox;
  readonly push: Push;

  private readonly options: SwitchboardOptions;
  private readonly connection: Connection;
  private readonly subscriptions: Subscriptions;
  private readonly receiptBook: Receipts;
  private readonly outbox: Outbox;
  private readonly autoAway: AutoAway;
  private readonly typingHelpers = new Map<string, Typing>();
  private readonly stopOnline: (() => void) | undefined;

  constructor(options: SwitchboardOptions) {
    super();
    if (typeof options !== 'object' || options === null) throw new TypeError('new Switchboard(options) needs {url, token}');
    this.options = options;
    if (options.random !== undefined && typeof options.random !== 'function') throw new TypeError('Switchboard: random must be a function returning numbers in [0, 1)');
    const random = options.random ?? defaultRandom();
    const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    const storage = options.storage ?? defaultStorage();
    this.connection = new Connection(options, random, this.stats);
    this.subscriptions = new Subscriptions(
      this.connection,
      { delivered: (event) => this.delivered(event), error: (error) => this.emit('error', error) },
      this.stats,
      random,
      requestTimeoutMs,
    );
    this.receiptBook = new Receipts({
      fire: (frame) => this.connection.fire(frame),
      me: () => this.connection.user,
      announce: (update) => this.emit('receipt', update),
    });
    this.outbox = new Outbox(
      {
        readyUser: () => (this.connection.canSend ? this.connection.user : undefined),
        publishFrame: async (message) => {
          const frame: ClientFrame = { op: 'pub', ch: message.ch, type: message.type, data: message.data, key: message.key };
          if (message.trace) frame.trace = message.trace;
          const ok = await this.connection.request(frame);
          return { seq: ok.seq ?? 0, event_id: ok.event_id ?? '' };
        },
        added: (message) => this.emit('message', message),
        sent: (message) => this.receiptBook.messageSent(message),
      },
      storage,
      `${options.storageKey ?? 'switchboard'}:outbox`,
      random,
    );
    const hostRequest = (frame: ClientFrame): Promise<ServerFrame> => this.connection.request(frame);
    const hostSubscribe = (ch: string, opts: SubscribeOptions, handler: (event: ChannelEvent) => void): (() => void) =>
      this.subscribe(ch, opts, handler);
    this.presence = new Presence({
      request: hostRequest,
      rpc: (method, params) => this.rpc(method, params),
      subscribe: hostSubscribe,
      report: (error) => this.emit('error', error),
    });
    const whenUser = (listener: (user: string) => void): void => {
      if (this.connection.user) listener(this.connection.user);
      else this.once('welcome', ({ user }) => listener(user));
    };
    this.notifications = new Notifications({ rpc: (method, params) => this.rpc(method, params), subscribe: hostSubscribe, whenUser });
    this.inbox = new Inbox({ rpc: (method, params) => this.rpc(method, params), subscribe: hostSubscribe, whenUser });
    this.push = new Push({
      rpc: (method, params) => this.rpc(method, params),
      storage,
      storageKey: options.storageKey ?? 'switchboard',
      random,
      device: options.device,
    });
    this.autoAway = new AutoAway(options.idleAfterMs ?? DEFAULT_IDLE_AFTER_MS, { idle: (idle) => this.presence.setIdle(idle) });
    this.autoAway.attachToPage();

    this.connection.host = {
      frame: (frame, transport) => this.onFrame(frame, transport),
      linkUp: (transport) => {
        this.subscriptions.linkUp(transport);
        if (transport !== 'websocket') return;
        this.receiptBook.flush();
        this.presence.resend();
        this.outbox.kick();
      },
      linkDown: () => this.subscriptions.linkDown(),
      sseChannels: () => this.subscriptions.sseChannels(),
      sseRefused: (ch, message) => this.subscriptions.refused(ch, new SwitchboardError('forbidden', message)),
    };
    this.connection.on('state', (change) => this.emit('state', change));
    this.connection.on('latency', (ms) => this.emit('latency', ms));
    this.connection.on('welcome', (welcome) => this.emit('welcome', welcome));

    // A browser that comes back online need not wait for the backoff.
    const target = globalThis as { addEventListener?: (type: string, listener: () => void) => void; removeEventListener?: (type: string, listener: () => void) => void };
    if (typeof target.addEventListener === 'function') {
      const online = (): void => this.reconnectNow('online');
      target.addEventListener('online', online);
      this.stopOnline = () => target.removeEventListener?.('online', online);
    }
  }

  /** Current connection state. */
  get state(): ConnectionState {
    return this.connection.state;
  }

  /** The authenticated user (from `welcome`, or the token on SSE). */
  get user(): string | undefined {
    return this.connection.user;
  }

  /** Latest round-trip time in ms. */
  get latency(): number | undefined {
    return this.connection.latency;
  }

  /** Which transport the current connection uses. */
  get transport(): Transport | undefined {
    return this.connection.transport;
  }

  // --- connection ------------------------------------------------------------------------

  /** Skips the backoff wait when reconnecting (e.g. the network is back). */
  reconnectNow(reason = 'reconnect_now'): void {
    this.connection.reconnectNow(reason);
  }

  /**
   * Connects (or reconnects after `disconnected`). Resolves on the first successful
   * connection; rejects if the client ends up `disconnected` first (e.g. unauthorized).
   */
  connect(): Promise<void> {
    return this.connection.connect();
  }

  /** Replaces the token (or provider) and reconnects if the last one was refused. */
  setToken(token: string | TokenProvider): void {
    this.connection.setToken(token);
  }

  /** Closes the connection for good (until `connect` is called again). */
  close(): void {
    this.connection.close();
  }

  /** Closes and stops the outbox and every helper; the client cannot be used again. */
  destroy(): void {
    this.close();
    this.outbox.close();
    this.autoAway.dispose();
    this.stopOnline?.();
    for (const typing of this.typingHelpers.values()) typing.dispose();
  }

  /** Resolves when connected (immediately if already), or rejects after `timeoutMs`. */
  whenConnected(timeoutMs?: number): Promise<void> {
    return this.connection.whenConnected(timeoutMs);
  }

  /** Measures the round trip to the edge. */
  ping(): Promise<number> {
    return this.connection.ping();
  }

  // --- app state ---------------------------------------------------------------------------

  /**
   * Tells the SDK whether the app is in front of the user (React Native's AppState; in a
   * browser the page's visibility does this by itself). In the background with no input
   * for `idleAfterMs`, this device shows `away`; `active` shows `online` again.
   */
  setAppState(state: AppState): void {
    this.autoAway.setAppState(state);
  }

  /** Reports user input where the SDK cannot see it (outside a browser page). */
  reportActivity(): void {
    this.autoAway.activity();
  }

  // --- subscriptions ---------------------------------------------------------------------

  /**
   * Subscribes to a channel and calls `handler` once per event, in seq order, across
   * reconnects. Returns the function that unsubscribes this handler.
   */
  subscribe<D = unknown>(ch: string, options: SubscribeOptions, handler: (event: ChannelEvent<D>) => void): () => void;
  subscribe<D = unknown>(ch: string, handler: (event: ChannelEvent<D>) => void): () => void;
  subscribe<D = unknown>(
    ch: string,
    optionsOrHandler: SubscribeOptions | ((event: ChannelEvent<D>) => void),
    maybeHandler?: (event: ChannelEvent<D>) => void,
  ): () => void {
    const options = typeof optionsOrHandler === 'function' ? {} : (optionsOrHandler ?? {});
    const handler = (typeof optionsOrHandler === 'function' ? optionsOrHandler : maybeHandler) as (event: ChannelEvent) => void;
    return this.subscriptions.add(ch, options, handler);
  }

  /** The resume position of a channel (persist it to resume after a reload). */
  position(ch: string): { seq: number; epoch: string } | undefined {
    return this.subscriptions.position(ch);
  }

  // --- publishing and receipts -----------------------------------------------------------

  /**
   * Publishes a chat message (`message.new`, `message.edited`, `message.deleted`). It is
   * queued (and persisted) until the server stores it; the returned message's status
   * moves sending -> sent -> delivered -> read, or to failed.
   */
  publish<D = unknown>(ch: string, type: string, data: D, options: { key?: string; trace?: string } = {}): OutgoingMessage<D> {
    if (typeof ch !== 'string' || ch.length === 0) throw new TypeError('publish needs a channel name such as "conversation:c1"');
    if (typeof type !== 'string' || type.length === 0) throw new TypeError('publish needs an event type such as "message.new"');
    if (options.key !== undefined && (typeof options.key !== 'string' || options.key.length === 0)) throw new TypeError('publish: key must be a non-empty string');
    checkTrace('publish', options.trace);
    const token = this.connection.currentToken();
    const user = this.connection.user ?? (token ? tokenClaims(token)?.sub : undefined);
    return this.outbox.add(ch, type, data, options.key, user, options.trace);
  }

  /** Messages restored from storage or still waiting to be sent. */
  pendingMessages(): Promise<OutgoingMessage[]> {
    return this.outbox.ready.then(() => this.outbox.pending());
  }

  /** Receipt cursors seen on a conversation, per user. */
  receipts(ch: string): Map<string, { delivered: number; read: number }> {
    return this.receiptBook.of(ch);
  }

  /** Tells the server this device received everything up to `seq` on a conversation. */
  ack(ch: string, seq: number): void {
    this.receiptBook.ack(ch, seq);
  }

  /** Tells the server the user has read everything up to `seq` (implies delivered). */
  read(ch: string, seq: number): void {
    this.receiptBook.read(ch, seq);
  }

  // --- signals ---------------------------------------------------------------------------

  /** Sends an ephemeral signal; dropped when not connected (signals are lossy). */
  signal(ch: string, type: string, data: unknown = null): boolean {
    if (typeof ch !== 'string' || ch.length === 0 || typeof type !== 'string' || type.length === 0) {
      throw new TypeError('signal needs a channel and a type');
    }
    return this.connection.fire({ op: 'sig', ch, type, data });
  }

  /** The typing helper of a channel (one per channel, created on first use). */
  typing(ch: string, options: TypingOptions = {}): Typing {
    let helper = this.typingHelpers.get(ch);
    if (!helper) {
      helper = new Typing(ch, options, {
        send: (typing) => this.signal(ch, 'typing', { typing }),
        me: () => this.connection.user,
      });
      this.typingHelpers.set(ch, helper);
    }
    return helper;
  }

  // --- requests --------------------------------------------------------------------------

  /**
   * Calls a backend service (`svc.<method>`) and resolves with its result. `trace` is a
   * W3C `traceparent` the call continues (docs/protocol.md, section 4.10).
   */
  rpc<R = unknown>(method: string, params: unknown = {}, options: { trace?: string } = {}): Promise<R> {
    if (typeof method !== 'string' || !/^[a-z0-9_]+(\.[a-z0-9_]+)*$/i.test(method)) {
      return Promise.reject(new TypeError(`rpc: ${JSON.stringify(method)} is not a method name such as "notifications.list"`));
    }
    try {
      checkTrace('rpc', options.trace);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.connection.rpc<R>(method, params, options.trace);
  }

  /**
   * Searches the messages of the conversations the user takes part in (`messages.search`,
   * newest first; `ch` narrows it to one, `before` is the previous page's `next`).
   */
  search<D = unknown>(q: string, options: SearchOptions = {}): Promise<SearchPage<D>> {
    try {
      return search<D>((method, params) => this.rpc(method, params), q, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** One page of stored events with seq < `before` (default: the newest), ascending. */
  async history(ch: string, options: { before?: number; limit?: number } = {}): Promise<HistoryPage> {
    const frame: ClientFrame = { op: 'history', ch };
    if (options.before !== undefined) frame.before = options.before;
    if (options.limit !== undefined) frame.limit = options.limit;
    const ok = await this.connection.request(frame);
    const events = (ok.events ?? []).map((e) => ({ ch: e.ch, seq: e.seq, event: e.event }));
    return { events, before: events.length > 0 ? events[0]!.seq : null };
  }

  /** Pages back through a channel's history, newest page first, until nothing is older. */
  async *historyPages(ch: string, options: { before?: number; limit?: number } = {}): AsyncGenerator<ChannelEvent[]> {
    let before = options.before;
    for (;;) {
      const page = await this.history(ch, { before, limit: options.limit });
      if (page.events.length === 0) return;
      yield page.events;
      if (page.before === null || page.before <= 1) return;
      before = page.before;
    }
  }

  // --- frames ----------------------------------------------------------------------------

  private onFrame(frame: ServerFrame, transport: Transport): void {
    switch (frame.op) {
      case 'evt':
        this.subscriptions.event(frame);
        return;
      case 'sig':
        this.onSignal(frame);
        return;
      case 'ok':
        if (transport === 'sse' && frame.ch) this.subscriptions.sseSubscribed(frame);
        return;
      case 'err':
        this.emit('error', new SwitchboardError((frame.code ?? 'internal') as never, frame.message ?? 'refused'));
        return;
      case 'unsubbed':
        if (frame.ch) this.subscriptions.refused(frame.ch, new SwitchboardError('forbidden', `subscription ${frame.ch} ended: ${frame.code ?? 'revoked'}`));
        return;
      default:
        return;
    }
  }

  /** What the SDK itself learns from events: receipts, typing, auto-ack. */
  private delivered(delivery: ChannelEvent): void {
    const { ch, seq, event } = delivery;
    if (event.type === 'message.receipt') {
      const data = event.data as ReceiptData | null;
      if (data && typeof data.user === 'string') this.receiptBook.apply(ch, data);
      return;
    }
    if (event.type === 'message.new' && event.actor?.id) {
      this.typingHelpers.get(ch)?.remoteStopped(event.actor.id);
      if ((this.options.autoAck ?? true) && event.actor.id !== this.connection.user && ch.startsWith('conversation:')) {
        this.receiptBook.ack(ch, seq);
      }
    }
  }

  private onSignal(frame: ServerFrame): void {
    if (!frame.ch || !frame.type) return;
    const signal: Signal = { ch: frame.ch, from: frame.from ?? '', type: frame.type, data: frame.data ?? null };
    if (signal.type === 'typing') this.typingHelpers.get(signal.ch)?.remoteSignal(signal);
    this.subscriptions.signal(signal);
    this.emit('signal', signal);
  }
}

/** A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), or absent. */
function checkTrace(what: string, trace: unknown): void {
  if (trace === undefined) return;
  if (typeof trace !== 'string' || !/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/.test(trace)) {
    throw new TypeError(`${what}: trace must be a W3C traceparent such as "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"`);
  }
}
