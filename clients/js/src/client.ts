/**
 * The Switchboard client: one logical connection that survives edges coming and going.
 *
 * It owns the connection state machine (connecting -> connected -> reconnecting -> ...),
 * authentication and token refresh, the channel subscriptions with their resume cursors
 * and de-duplication, request/reply matching by `id`, and the outbox. Feature helpers
 * (typing, presence, notifications) are thin layers in their own files.
 *
 * Exactly-once to the app: per subscription the edge delivers in ascending seq order
 * without gaps or duplicates; across reconnects the client resubscribes with
 * `since: {seq: <last seq processed>, epoch}` and drops anything at or below that seq,
 * and anything whose event id it has already seen (a re-published event).
 */

import { Emitter, reportListenerError } from './emitter.js';
import { SwitchboardError } from './errors.js';
import {
  SseLink,
  WebSocketLink,
  type Link,
  type LinkEnd,
  type WebSocketConstructor,
} from './links.js';
import { Notifications } from './notifications.js';
import { Outbox, OutgoingMessage } from './outbox.js';
import { Presence } from './presence.js';
import type {
  ByeCode,
  ChannelEvent,
  ClientFrame,
  ReceiptData,
  ServerFrame,
  Signal,
  Since,
} from './protocol.js';
import { defaultStorage, type StorageAdapter } from './storage.js';
import { Typing, type TypingOptions } from './typing.js';
import { RecentSet, backoffDelay, tokenClaims, typesMatch, type BackoffOptions } from './util.js';

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/**
 * Why the state changed. `connect` (the app called connect), `welcome` (authenticated),
 * `closed` (the socket closed without a `bye`; `closeCode` says how), `open_failed`
 * (the edge could not be reached), `bye:<code>` (the server said goodbye: `draining`,
 * `token_expired`, `slow_consumer`, `rate_limited`, `protocol_error`, `unauthorized`),
 * `ping_timeout`, `connect_timeout`, `token_unavailable` (the token provider failed),
 * `no_token` (the provider returned no usable token), `client` (the app called close).
 */
export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  reason: string;
  /** For `reconnecting`: the attempt number (1-based) and the wait before it. */
  attempt?: number;
  delayMs?: number;
  closeCode?: number;
  /** The edge URL in use (for `connecting`/`connected`). */
  url?: string;
  transport?: 'websocket' | 'sse';
}

export type TokenReason = 'connect' | 'refresh' | 'expired' | 'reconnect';
/** Returns a JWT; called to connect, and again before the current one expires. */
export type TokenProvider = (context: { reason: TokenReason }) => string | Promise<string>;

export interface SwitchboardOptions {
  /** `ws(s)://host/v1/ws`; several URLs are tried in turn when one fails. */
  url: string | string[];
  /** A JWT, or a function that returns one (possibly async). */
  token: string | TokenProvider;
  /** WebSocket implementation; default the global one (pass `ws`'s in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** `fetch` for SSE and HTTP calls; default the global one. */
  fetch?: typeof fetch;
  /**
   * `auto` (default): WebSocket, falling back to SSE when there is no WebSocket or it
   * failed to open three times in a row; `websocket` or `sse` to force one.
   */
  transport?: 'auto' | 'websocket' | 'sse';
  /** Where queued messages survive reloads; default localStorage, else memory. */
  storage?: StorageAdapter;
  /** Prefix of the storage keys. Default `switchboard`. */
  storageKey?: string;
  /** Sent in `hello`. */
  device?: string;
  backoff?: BackoffOptions;
  /** Refresh the token this long before `exp` (capped at a quarter of its life). Default 60 s. */
  refreshLeadMs?: number;
  /** How long a request waits for its reply (and for a connection). Default 10 s. */
  requestTimeoutMs?: number;
  /** Latency probe (`ping`) interval; 0 disables. Default 10 s. */
  pingIntervalMs?: number;
  /** A `ping` unanswered this long means the link is dead. Default 10 s. */
  pingTimeoutMs?: number;
  /** The connection must be authenticated within this. Default 10 s. */
  connectTimeoutMs?: number;
  /** Acknowledge delivery (`ack`) of others' messages on conversations automatically. Default true. */
  autoAck?: boolean;
}

export interface SubscribeOptions {
  /** Type filters (`bid.new`, `bid.*`, `*`); absent or empty = every type. */
  types?: string[];
  /** Where the first subscription starts (later ones resume from the cursor). */
  since?: Since;
  /** The server could not resume without a gap (`recovered: false`) or the stream changed: refetch state. */
  onGap?: (gap: GapInfo) => void;
  /** The subscription was refused or revoked; it is over. */
  onError?: (error: SwitchboardError) => void;
  /** Each time the server confirms the subscription (first time and after every reconnect). */
  onSubscribed?: (info: { seq: number; epoch: string; recovered: boolean; resumed: boolean }) => void;
  /** Ephemeral signals on the channel (typing, cursors...). */
  onSignal?: (signal: Signal) => void;
}

export interface GapInfo {
  ch: string;
  /** `not_recovered`: events were lost (aged out); `epoch_changed`: the stream was recreated; `transport_changed`: resumed over a transport that cannot take the cursor. */
  reason: 'not_recovered' | 'epoch_changed' | 'transport_changed';
  seq: number;
  epoch: string;
}

export interface HistoryPage {
  /** Ascending seq order. */
  events: ChannelEvent[];
  /** Pass as `before` for the next (older) page; null when there is nothing older. */
  before: number | null;
}

export interface ReceiptUpdate {
  ch: string;
  user: string;
  delivered: number;
  read: number;
}

interface ClientEvents {
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
  sentTypes: string[] | undefined;
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

interface Pending {
  resolve: (frame: ServerFrame) => void;
  reject: (error: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const SSE_AFTER_WS_FAILURES = 3;
/** A connection that lasted this long resets the backoff. */
const STABLE_MS = 5_000;

export class Switchboard extends Emitter<ClientEvents> {
  /** Current connection state. */
  state: ConnectionState = 'idle';
  /** The authenticated user (from `welcome`, or the token on SSE). */
  user: string | undefined;
  /** Latest round-trip time in ms. */
  latency: number | undefined;
  /** Which transport the current connection uses. */
  transport: 'websocket' | 'sse' | undefined;
  /** Counters useful in tests and dashboards. */
  readonly stats = { duplicatesDropped: 0, reconnects: 0, eventsDelivered: 0 };

  readonly notifications: Notifications;
  readonly presence: Presence;

  private readonly urls: string[];
  private urlIndex = 0;
  private readonly options: SwitchboardOptions;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly fetchImpl: typeof fetch | undefined;
  private readonly outbox: Outbox;
  private readonly channels = new Map<string, ChannelSub>();
  private readonly pending = new Map<number, Pending>();
  private readonly sentMessages = new Map<string, OutgoingMessage[]>();
  private readonly receiptState = new Map<string, Map<string, { delivered: number; read: number }>>();
  private readonly receiptCursors = new Map<string, { ack: number; read: number; sentAck: number; sentRead: number }>();
  private readonly typingHelpers = new Map<string, Typing>();
  private link: Link | undefined;
  private token: string | undefined;
  private nextId = 1;
  private attempt = 0;
  private wsFailures = 0;
  private lastBye: ByeCode | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setTimeout> | undefined;
  private stableTimer: ReturnType<typeof setTimeout> | undefined;
  private sseCursor: string | undefined;
  private sseReopenTimer: ReturnType<typeof setTimeout> | undefined;
  private generation = 0;

  constructor(options: SwitchboardOptions) {
    super();
    this.options = options;
    this.urls = Array.isArray(options.url) ? [...options.url] : [options.url];
    if (this.urls.length === 0) throw new TypeError('Switchboard: at least one url is needed');
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.fetchImpl = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    const storageKey = `${options.storageKey ?? 'switchboard'}:outbox`;
    this.outbox = new Outbox(
      {
        readyUser: () => (this.state === 'connected' && this.transport === 'websocket' ? this.user : undefined),
        publishFrame: (message) => this.publishFrame(message),
        added: (message) => this.emit('message', message),
        sent: (message) => this.onMessageSent(message),
      },
      options.storage ?? defaultStorage(),
      storageKey,
    );
    this.notifications = new Notifications(this);
    this.presence = new Presence(this);
    // A browser that comes back online need not wait for the backoff.
    const target = globalThis as { addEventListener?: (type: string, listener: () => void) => void };
    target.addEventListener?.('online', () => this.reconnectNow('online'));
  }

  /** Skips the backoff wait when reconnecting (e.g. the network is back). */
  reconnectNow(reason = 'reconnect_now'): void {
    if (this.state !== 'reconnecting' || !this.reconnectTimer) return;
    this.clearTimers();
    void this.open(reason, 'reconnect');
  }

  // --- connection ------------------------------------------------------------------------

  /**
   * Connects (or reconnects after `disconnected`). Resolves on the first successful
   * connection; rejects if the client ends up `disconnected` first (e.g. unauthorized).
   */
  connect(): Promise<void> {
    if (this.state === 'connected') return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => {
      const off = this.on('state', (change) => {
        if (change.state === 'connected') {
          off();
          resolve();
        } else if (change.state === 'disconnected') {
          off();
          reject(new SwitchboardError(change.reason === 'client' ? 'closed' : 'unauthorized', `disconnected: ${change.reason}`));
        }
      });
    });
    if (this.state === 'idle' || this.state === 'disconnected') {
      this.generation++;
      this.attempt = 0;
      this.lastBye = undefined;
      void this.open('connect', 'connect');
    }
    return done;
  }

  /** Replaces the token (or provider) and reconnects if the last one was refused. */
  setToken(token: string | TokenProvider): void {
    this.options.token = token;
    this.token = undefined;
    if (this.state === 'disconnected' && this.lastBye !== undefined) void this.connect().catch(() => undefined);
  }

  /** Closes the connection for good (until `connect` is called again). */
  close(): void {
    this.generation++;
    this.teardownLink();
    this.clearTimers();
    this.rejectPending(new SwitchboardError('closed', 'the client was closed'));
    this.setState('disconnected', { reason: 'client' });
  }

  /** Closes and stops the outbox and every helper; the client cannot be used again. */
  destroy(): void {
    this.close();
    this.outbox.close();
    for (const typing of this.typingHelpers.values()) typing.dispose();
  }

  /** Resolves when connected (immediately if already), or rejects after `timeoutMs`. */
  whenConnected(timeoutMs = this.options.requestTimeoutMs ?? 10_000): Promise<void> {
    if (this.state === 'connected') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new SwitchboardError('disconnected', 'not connected'));
      }, timeoutMs);
      const off = this.on('state', (change) => {
        if (change.state === 'connected') {
          clearTimeout(timer);
          off();
          resolve();
        } else if (change.state === 'disconnected') {
          clearTimeout(timer);
          off();
          reject(new SwitchboardError('disconnected', `disconnected: ${change.reason}`));
        }
      });
    });
  }

  private setState(state: ConnectionState, detail: Omit<StateChange, 'state' | 'previous'>): void {
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous, ...detail });
  }

  private async chooseTransport(url: string): Promise<'websocket' | 'sse'> {
    const wanted = this.options.transport ?? 'auto';
    if (wanted !== 'auto') return wanted;
    if (!this.WS) return 'sse';
    if (this.wsFailures < SSE_AFTER_WS_FAILURES || !this.fetchImpl) return 'websocket';
    // WebSockets keep failing. Fall back to SSE only if the edge answers plain HTTP: a
    // proxy that blocks upgrades, not an edge that is down (SSE would not help there).
    try {
      const response = await this.fetchImpl(`${httpBase(url)}/healthz`, { cache: 'no-store' });
      return response.ok ? 'sse' : 'websocket';
    } catch {
      return 'websocket';
    }
  }

  private async getToken(reason: TokenReason): Promise<string> {
    const source = this.options.token;
    const token = typeof source === 'string' ? source : await source({ reason });
    if (typeof token !== 'string' || token.length === 0) throw new SwitchboardError('unauthorized', 'the token provider returned no token');
    return token;
  }

  /** Opens a link to the current URL. */
  private async open(reason: string, tokenReason: TokenReason): Promise<void> {
    const generation = this.generation;
    const url = this.urls[this.urlIndex % this.urls.length]!;
    const transport = await this.chooseTransport(url);
    if (generation !== this.generation) return;
    this.setState('connecting', { reason, url, transport });
    let token: string;
    try {
      token = this.token && tokenReason === 'reconnect' && !expired(this.token) ? this.token : await this.getToken(tokenReason);
    } catch (error) {
      if (generation !== this.generation) return;
      if (error instanceof SwitchboardError && error.code === 'unauthorized') {
        this.setState('disconnected', { reason: 'no_token' });
        return;
      }
      this.scheduleReconnect('token_unavailable');
      return;
    }
    if (generation !== this.generation) return;
    if (expired(token)) {
      // The provider has nothing fresher: connecting would only be refused.
      this.lastBye = 'unauthorized';
      this.setState('disconnected', { reason: 'token_expired' });
      return;
    }
    this.token = token;
    this.transport = transport;
    this.lastBye = undefined;
    this.connectTimer = setTimeout(() => {
      this.abandon('connect_timeout');
    }, this.options.connectTimeoutMs ?? 10_000);
    if (transport === 'websocket' && this.WS) {
      const link: Link = new WebSocketLink(url, this.WS, {
        open: () => link.send({ op: 'hello', token, ...(this.options.device ? { device: this.options.device } : {}) }),
        frame: (frame) => this.onFrame(frame),
        end: (end) => this.onLinkEnd(link, end),
      });
      this.link = link;
    } else {
      this.openSse(url, token);
    }
  }

  private openSse(wsUrl: string, token: string): void {
    if (!this.fetchImpl) {
      this.setState('disconnected', { reason: 'no_transport' });
      return;
    }
    const base = httpBase(wsUrl);
    const params = new URLSearchParams();
    const headers: Record<string, string> = { Authorization: `Bearer ${token}` };
    for (const sub of this.channels.values()) {
      if (sub.phase === 'ended' || sub.listeners.size === 0) continue;
      params.append('ch', sub.ch);
      sub.phase = 'subscribing';
      sub.requestId = undefined;
    }
    if (![...params.keys()].length) params.append('ch', 'system:broadcast');
    if (this.sseCursor) headers['Last-Event-ID'] = this.sseCursor;
    const link: Link = new SseLink(`${base}/v1/sse?${params.toString()}`, headers, this.fetchImpl, {
      open: () => {
        const claims = tokenClaims(token);
        this.onWelcome({ op: 'welcome', user: claims?.sub, session: 'sse', heartbeat_ms: 0 }, link);
      },
      frame: (frame, id) => {
        if (id) this.sseCursor = id;
        this.onFrame(frame, true);
      },
      end: (end) => this.onLinkEnd(link, end),
    });
    this.link = link;
  }

  /** Drops the current link as dead and reconnects. */
  private abandon(reason: string): void {
    const link = this.link;
    if (!link) return;
    this.teardownLink();
    this.afterLinkLost(reason, undefined, false);
  }

  private teardownLink(): void {
    const link = this.link;
    this.link = undefined;
    link?.close();
    for (const timer of [this.connectTimer, this.pingTimer, this.refreshTimer, this.stableTimer, this.sseReopenTimer]) {
      if (timer) clearTimeout(timer);
    }
    this.connectTimer = this.pingTimer = this.refreshTimer = this.stableTimer = this.sseReopenTimer = undefined;
    for (const sub of this.channels.values()) {
      if (sub.phase !== 'ended') sub.phase = 'idle';
      if (sub.retryTimer) clearTimeout(sub.retryTimer);
      sub.retryTimer = undefined;
    }
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
  }

  private onLinkEnd(link: Link, end: LinkEnd): void {
    if (link !== this.link) return;
    const wasConnected = this.state === 'connected';
    this.teardownLink();
    // Count WebSocket failures toward the SSE fallback; after an SSE stream, try WebSocket again.
    this.wsFailures = link.kind === 'websocket' && !end.opened ? this.wsFailures + 1 : 0;
    if (end.httpStatus === 401 || end.errorCode === 'unauthorized') this.lastBye = 'unauthorized';
    if (end.errorCode === 'forbidden' && end.message) {
      // SSE refuses the whole stream for one forbidden channel ("<channel>: why"): drop
      // that subscription and reopen with the rest.
      const sub = this.channels.get(end.message.split(': ')[0] ?? '');
      if (sub) this.endSubscription(sub, new SwitchboardError('forbidden', end.message));
    }
    const reason = this.lastBye ? `bye:${this.lastBye}` : end.opened ? 'closed' : 'open_failed';
    this.afterLinkLost(reason, end.closeCode, wasConnected);
  }

  private afterLinkLost(reason: string, closeCode: number | undefined, wasConnected: boolean): void {
    this.rejectPending(new SwitchboardError('disconnected', `connection lost (${reason})`));
    const bye = this.lastBye;
    if (bye === 'unauthorized') {
      this.setState('disconnected', { reason, closeCode });
      return;
    }
    if (!wasConnected || reason === 'open_failed' || reason === 'connect_timeout') {
      // This edge did not work out; the next attempt tries the next URL.
      this.urlIndex++;
    } else if (bye === 'draining') {
      this.urlIndex++;
    }
    this.scheduleReconnect(reason, closeCode);
  }

  private scheduleReconnect(reason: string, closeCode?: number): void {
    const bye = this.lastBye;
    // A draining edge asks us to move now; anything else backs off with full jitter.
    const delay = bye === 'draining' || bye === 'token_expired' ? 0 : backoffDelay(this.attempt, this.options.backoff);
    this.attempt++;
    this.stats.reconnects++;
    this.setState('reconnecting', { reason, attempt: this.attempt, delayMs: delay, closeCode });
    const generation = this.generation;
    const tokenReason: TokenReason = bye === 'token_expired' ? 'expired' : 'reconnect';
    if (bye === 'token_expired') this.token = undefined;
    this.clearTimers();
    this.reconnectTimer = setTimeout(() => {
      if (generation !== this.generation) return;
      void this.open(reason, tokenReason);
    }, delay);
  }

  // --- frames ----------------------------------------------------------------------------

  private onFrame(frame: ServerFrame, overSse = false): void {
    switch (frame.op) {
      case 'welcome':
        if (this.link) this.onWelcome(frame, this.link);
        return;
      case 'evt':
        this.onEvent(frame);
        return;
      case 'sig':
        this.onSignal(frame);
        return;
      case 'ok':
      case 'err':
      case 'pong':
        if (frame.id !== undefined && this.pending.has(frame.id)) {
          const pending = this.pending.get(frame.id)!;
          this.pending.delete(frame.id);
          clearTimeout(pending.timer);
          if (frame.op === 'err') pending.reject(new SwitchboardError((frame.code ?? 'internal') as never, frame.message ?? 'refused'));
          else pending.resolve(frame);
        } else if (overSse && frame.op === 'ok' && frame.ch) {
          const sub = this.channels.get(frame.ch);
          if (sub && sub.phase === 'subscribing') this.onSubscribed(sub, frame, true);
        } else if (frame.op === 'err') {
          this.emit('error', new SwitchboardError((frame.code ?? 'internal') as never, frame.message ?? 'refused'));
        }
        return;
      case 'unsubbed': {
        const sub = frame.ch ? this.channels.get(frame.ch) : undefined;
        if (sub) this.endSubscription(sub, new SwitchboardError('forbidden', `subscription ${sub.ch} ended: ${frame.code ?? 'revoked'}`));
        return;
      }
      case 'bye':
        this.lastBye = frame.code as ByeCode;
        return;
      default:
        return;
    }
  }

  private onWelcome(frame: ServerFrame, link: Link): void {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.user = frame.user;
    this.setState('connected', { reason: 'welcome', url: link.url, transport: link.kind });
    this.emit('welcome', { user: frame.user ?? '', session: frame.session ?? '', heartbeatMs: frame.heartbeat_ms ?? 0, url: link.url });
    this.stableTimer = setTimeout(() => {
      this.attempt = 0;
    }, STABLE_MS);
    this.scheduleRefresh();
    if (link.kind === 'websocket') {
      for (const sub of this.channels.values()) this.sendSubscribe(sub);
      this.flushReceipts();
      this.presence.resend();
      void this.ping().catch(() => undefined);
      this.outbox.kick();
    }
  }

  private onEvent(frame: ServerFrame): void {
    const ch = frame.ch;
    const seq = frame.seq;
    const event = frame.event;
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
    this.internalEvent(delivery);
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

  /** What the SDK itself learns from events: receipts, typing, auto-ack. */
  private internalEvent(delivery: ChannelEvent): void {
    const { ch, seq, event } = delivery;
    if (event.type === 'message.receipt') {
      const data = event.data as ReceiptData | null;
      if (data && typeof data.user === 'string') this.applyReceipt(ch, data);
      return;
    }
    if (event.type === 'message.new' && event.actor?.id) {
      this.typingHelpers.get(ch)?.remoteStopped(event.actor.id);
      if ((this.options.autoAck ?? true) && event.actor.id !== this.user && ch.startsWith('conversation:')) {
        this.ack(ch, seq);
      }
    }
  }

  private onSignal(frame: ServerFrame): void {
    if (!frame.ch || !frame.type) return;
    const signal: Signal = { ch: frame.ch, from: frame.from ?? '', type: frame.type, data: frame.data ?? null };
    if (signal.type === 'typing') this.typingHelpers.get(signal.ch)?.remoteSignal(signal);
    const sub = this.channels.get(signal.ch);
    if (sub) {
      for (const listener of [...sub.listeners]) {
        if (!listener.options.onSignal) continue;
        try {
          listener.options.onSignal(signal);
        } catch (error) {
          reportListenerError(error);
        }
      }
    }
    this.emit('signal', signal);
  }

  // --- requests --------------------------------------------------------------------------

  /** Sends a request frame and resolves with its `ok` (rejects with its `err`). */
  private async request(frame: ClientFrame, timeoutMs = this.options.requestTimeoutMs ?? 10_000): Promise<ServerFrame> {
    await this.whenConnected(timeoutMs);
    if (this.transport !== 'websocket' || !this.link) {
      throw new SwitchboardError('not_supported', `${frame.op} needs a WebSocket connection`);
    }
    const id = this.nextId++;
    const link = this.link;
    return new Promise<ServerFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SwitchboardError('timeout', `no answer to ${frame.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      link.send({ ...frame, id });
    });
  }

  private rejectPending(error: SwitchboardError): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  /** Sends a frame that has no reply on success, if connected over WebSocket. */
  private fire(frame: ClientFrame): boolean {
    if (this.state !== 'connected' || this.transport !== 'websocket' || !this.link) return false;
    this.link.send(frame);
    return true;
  }

  /** Calls a backend service (`svc.<method>`) and resolves with its result. */
  async rpc<R = unknown>(method: string, params: unknown = {}): Promise<R> {
    if (this.transport === 'sse' && this.state === 'connected' && this.fetchImpl && this.token) {
      return this.httpRpc<R>(method, params);
    }
    const ok = await this.request({ op: 'rpc', method, params });
    return ok.result as R;
  }

  private async httpRpc<R>(method: string, params: unknown): Promise<R> {
    const url = `${httpBase(this.urls[this.urlIndex % this.urls.length]!)}/v1/rpc/${encodeURIComponent(method)}`;
    const response = await this.fetchImpl!(url, {
      method: 'POST',
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(params ?? {}),
    });
    const body = (await response.json().catch(() => ({}))) as { result?: R; code?: string; message?: string };
    if (!response.ok) throw new SwitchboardError((body.code ?? 'internal') as never, body.message ?? `HTTP ${response.status}`);
    return body.result as R;
  }

  /** One page of stored events with seq < `before` (default: the newest), ascending. */
  async history(ch: string, options: { before?: number; limit?: number } = {}): Promise<HistoryPage> {
    const frame: ClientFrame = { op: 'history', ch };
    if (options.before !== undefined) frame.before = options.before;
    if (options.limit !== undefined) frame.limit = options.limit;
    const ok = await this.request(frame);
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

  /** Measures the round trip to the edge. */
  async ping(): Promise<number> {
    if (this.pingTimer) clearTimeout(this.pingTimer);
    const interval = this.options.pingIntervalMs ?? 10_000;
    const started = Date.now();
    const link = this.link;
    try {
      await this.request({ op: 'ping' }, this.options.pingTimeoutMs ?? 10_000);
      const rtt = Date.now() - started;
      this.latency = rtt;
      this.emit('latency', rtt);
      return rtt;
    } catch (error) {
      if (error instanceof SwitchboardError && error.code === 'timeout' && link === this.link) this.abandon('ping_timeout');
      throw error;
    } finally {
      if (interval > 0 && link === this.link && this.link) {
        if (this.pingTimer) clearTimeout(this.pingTimer);
        this.pingTimer = setTimeout(() => void this.ping().catch(() => undefined), interval);
      }
    }
  }

  // --- tokens ----------------------------------------------------------------------------

  private scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    const exp = this.token ? tokenClaims(this.token)?.exp : undefined;
    if (!exp || typeof this.options.token === 'string') return;
    const now = Date.now();
    const life = exp * 1000 - now;
    const lead = Math.min(this.options.refreshLeadMs ?? 60_000, Math.max(life / 4, 0));
    const wait = Math.max(0, life - lead);
    const link = this.link;
    this.refreshTimer = setTimeout(() => void this.refresh(link), Math.min(wait, 2 ** 31 - 1));
  }

  private async refresh(link: Link | undefined): Promise<void> {
    if (!link || link !== this.link) return;
    let token: string;
    try {
      token = await this.getToken('refresh');
    } catch {
      this.retryRefresh(link);
      return;
    }
    if (link !== this.link) return;
    if (token === this.token) {
      // Nothing newer yet: ask again a little later, while the old one is still valid.
      this.retryRefresh(link);
      return;
    }
    if (link.kind === 'sse') {
      // SSE cannot refresh in band: reopen the stream with the new token and the cursor.
      this.token = token;
      this.reopenSse();
      return;
    }
    try {
      await this.request({ op: 'refresh', token });
      this.token = token;
      this.scheduleRefresh();
    } catch {
      this.retryRefresh(link);
    }
  }

  private retryRefresh(link: Link): void {
    const exp = this.token ? tokenClaims(this.token)?.exp : undefined;
    if (!exp || exp * 1000 <= Date.now() || link !== this.link) return;
    const wait = Math.min(5_000, Math.max(500, (exp * 1000 - Date.now()) / 4));
    this.refreshTimer = setTimeout(() => void this.refresh(link), wait);
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
    const options = typeof optionsOrHandler === 'function' ? {} : optionsOrHandler;
    const handler = (typeof optionsOrHandler === 'function' ? optionsOrHandler : maybeHandler) as (event: ChannelEvent) => void;
    if (typeof handler !== 'function') throw new TypeError('subscribe needs a handler');
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
    if (sub.phase === 'idle') this.sendSubscribe(sub);
    else if (sub.phase !== 'ended' && !sameTypes(before, after)) this.resubscribe(sub);
    return () => {
      if (!target.listeners.delete(listener)) return;
      if (target.listeners.size === 0) {
        if (target.phase === 'subscribing' || target.phase === 'live') {
          if (this.transport === 'sse') this.reopenSse();
          else this.fire({ op: 'unsub', ch: target.ch, id: this.nextId++ });
        }
        target.phase = 'ended';
        if (target.retryTimer) clearTimeout(target.retryTimer);
        if (this.channels.get(target.ch) === target) this.channels.delete(target.ch);
      }
    };
  }

  /** The resume position of a channel (persist it to resume after a reload). */
  position(ch: string): { seq: number; epoch: string } | undefined {
    const sub = this.channels.get(ch);
    return sub && sub.cursor !== undefined && sub.epoch !== undefined ? { seq: sub.cursor, epoch: sub.epoch } : undefined;
  }

  private sendSubscribe(sub: ChannelSub): void {
    if (sub.phase !== 'idle' || sub.listeners.size === 0) return;
    if (this.state !== 'connected' || !this.link) return;
    if (this.transport === 'sse') {
      this.reopenSse();
      return;
    }
    const id = this.nextId++;
    const frame: ClientFrame = { op: 'sub', id, ch: sub.ch };
    const types = sub.serverTypes();
    if (types) frame.types = types;
    const since = sub.since();
    if (since) frame.since = since;
    sub.phase = 'subscribing';
    sub.requestId = id;
    sub.sentSince = since;
    sub.sentTypes = types;
    const link = this.link;
    const timeoutMs = this.options.requestTimeoutMs ?? 10_000;
    const timer = setTimeout(() => {
      this.pending.delete(id);
      if (sub.requestId === id && link === this.link) this.retrySubscribe(sub);
    }, timeoutMs);
    this.pending.set(id, {
      timer,
      resolve: (ok) => {
        if (sub.requestId === id) this.onSubscribed(sub, ok, false);
      },
      reject: (error) => {
        if (sub.requestId !== id || error.code === 'disconnected') return;
        if (error.retryable) this.retrySubscribe(sub);
        else this.endSubscription(sub, error);
      },
    });
    link.send(frame);
  }

  private retrySubscribe(sub: ChannelSub): void {
    sub.phase = 'idle';
    sub.requestId = undefined;
    const delay = backoffDelay(sub.retryAttempt++, { initialMs: 1000, maxMs: 15_000 });
    if (sub.retryTimer) clearTimeout(sub.retryTimer);
    sub.retryTimer = setTimeout(() => {
      sub.retryTimer = undefined;
      if (sub.phase === 'idle') this.sendSubscribe(sub);
    }, delay);
  }

  private resubscribe(sub: ChannelSub): void {
    if (this.transport === 'sse') return; // SSE subscribes to every type already.
    if (sub.phase === 'subscribing' || sub.phase === 'live') this.fire({ op: 'unsub', ch: sub.ch, id: this.nextId++ });
    sub.phase = 'idle';
    this.sendSubscribe(sub);
  }

  private onSubscribed(sub: ChannelSub, ok: ServerFrame, overSse: boolean): void {
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

  private endSubscription(sub: ChannelSub, error: SwitchboardError): void {
    sub.phase = 'ended';
    if (this.channels.get(sub.ch) === sub) this.channels.delete(sub.ch);
    for (const listener of [...sub.listeners]) {
      try {
        if (listener.options.onError) listener.options.onError(error);
        else this.emit('error', error);
      } catch (e) {
        reportListenerError(e);
      }
    }
  }

  private reopenSse(): void {
    if (this.transport !== 'sse' || this.state !== 'connected') return;
    if (this.sseReopenTimer) return;
    // Coalesce a burst of subscribe calls into one new stream.
    this.sseReopenTimer = setTimeout(() => {
      this.sseReopenTimer = undefined;
      const link = this.link;
      if (!link || link.kind !== 'sse' || !this.token) return;
      const url = link.url;
      this.link = undefined;
      link.close();
      this.openSse(url, this.token);
    }, 20);
  }

  // --- publishing and receipts -----------------------------------------------------------

  /**
   * Publishes a chat message (`message.new`, `message.edited`, `message.deleted`). It is
   * queued (and persisted) until the server stores it; the returned message's status
   * moves sending -> sent -> delivered -> read, or to failed.
   */
  publish<D = unknown>(ch: string, type: string, data: D, options: { key?: string } = {}): OutgoingMessage<D> {
    const user = this.user ?? (this.token ? tokenClaims(this.token)?.sub : undefined);
    return this.outbox.add(ch, type, data, options.key, user);
  }

  /** Messages restored from storage or still waiting to be sent. */
  pendingMessages(): Promise<OutgoingMessage[]> {
    return this.outbox.ready.then(() => this.outbox.pending());
  }

  private async publishFrame(message: OutgoingMessage): Promise<{ seq: number; event_id: string }> {
    const ok = await this.request({ op: 'pub', ch: message.ch, type: message.type, data: message.data, key: message.key });
    return { seq: ok.seq ?? 0, event_id: ok.event_id ?? '' };
  }

  private onMessageSent(message: OutgoingMessage): void {
    let list = this.sentMessages.get(message.ch);
    if (!list) {
      list = [];
      this.sentMessages.set(message.ch, list);
    }
    list.push(message);
    if (list.length > 500) list.shift();
    // A receipt may already cover it.
    const state = this.receiptState.get(message.ch);
    if (state) for (const [user, cursors] of state) this.applyReceipt(message.ch, { user, ...cursors }, false);
  }

  private applyReceipt(ch: string, data: ReceiptData, announce = true): void {
    let state = this.receiptState.get(ch);
    if (!state) {
      state = new Map();
      this.receiptState.set(ch, state);
    }
    const old = state.get(data.user) ?? { delivered: 0, read: 0 };
    const read = Math.max(old.read, data.read ?? 0);
    const delivered = Math.max(old.delivered, data.delivered ?? 0, read);
    state.set(data.user, { delivered, read });
    if (data.user !== this.user) {
      for (const message of this.sentMessages.get(ch) ?? []) {
        if (message.seq === undefined) continue;
        if (message.seq <= read) message.setStatus('read');
        else if (message.seq <= delivered) message.setStatus('delivered');
      }
    }
    if (announce) this.emit('receipt', { ch, user: data.user, delivered, read });
  }

  /** Receipt cursors seen on a conversation, per user. */
  receipts(ch: string): Map<string, { delivered: number; read: number }> {
    return new Map(this.receiptState.get(ch) ?? []);
  }

  /** Tells the server this device received everything up to `seq` on a conversation. */
  ack(ch: string, seq: number): void {
    const cursor = this.cursorOf(ch);
    if (seq <= cursor.ack || seq <= cursor.read) return;
    cursor.ack = seq;
    this.flushReceipts();
  }

  /** Tells the server the user has read everything up to `seq` (implies delivered). */
  read(ch: string, seq: number): void {
    const cursor = this.cursorOf(ch);
    if (seq <= cursor.read) return;
    cursor.read = seq;
    this.flushReceipts();
  }

  private cursorOf(ch: string): { ack: number; read: number; sentAck: number; sentRead: number } {
    let cursor = this.receiptCursors.get(ch);
    if (!cursor) {
      cursor = { ack: 0, read: 0, sentAck: 0, sentRead: 0 };
      this.receiptCursors.set(ch, cursor);
    }
    return cursor;
  }

  private flushReceipts(): void {
    for (const [ch, cursor] of this.receiptCursors) {
      if (cursor.read > cursor.sentRead) {
        if (this.fire({ op: 'read', ch, seq: cursor.read })) {
          cursor.sentRead = cursor.read;
          cursor.sentAck = Math.max(cursor.sentAck, cursor.read);
        }
      }
      if (cursor.ack > cursor.sentAck) {
        if (this.fire({ op: 'ack', ch, seq: cursor.ack })) cursor.sentAck = cursor.ack;
      }
    }
  }

  // --- signals ---------------------------------------------------------------------------

  /** Sends an ephemeral signal; dropped when not connected (signals are lossy). */
  signal(ch: string, type: string, data: unknown = null): boolean {
    return this.fire({ op: 'sig', ch, type, data });
  }

  /** The typing helper of a channel (one per channel, created on first use). */
  typing(ch: string, options: TypingOptions = {}): Typing {
    let helper = this.typingHelpers.get(ch);
    if (!helper) {
      helper = new Typing(ch, options, {
        send: (typing) => this.signal(ch, 'typing', { typing }),
        me: () => this.user,
      });
      this.typingHelpers.set(ch, helper);
    }
    return helper;
  }

  // --- for the helpers -------------------------------------------------------------------

  /** @internal Sends a request frame; used by the presence helper. */
  _request(frame: ClientFrame): Promise<ServerFrame> {
    return this.request(frame);
  }

  /** @internal Reports an error not tied to a call. */
  _report(error: SwitchboardError): void {
    this.emit('error', error);
  }
}

function expired(token: string): boolean {
  const exp = tokenClaims(token)?.exp;
  return typeof exp === 'number' && exp * 1000 <= Date.now();
}

function sameTypes(a: string[] | undefined, b: string[] | undefined): boolean {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

/** `ws://host:port/v1/ws` -> `http://host:port`. */
export function httpBase(wsUrl: string): string {
  const url = new URL(wsUrl, (globalThis as { location?: { href: string } }).location?.href);
  url.protocol = url.protocol === 'wss:' ? 'https:' : url.protocol === 'ws:' ? 'http:' : url.protocol;
  return `${url.protocol}//${url.host}`;
}
