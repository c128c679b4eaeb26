/**
 * Every public type of the SDK in one place: the wire shapes of `switchboard.v1`
 * (docs/protocol.md) as the SDK reads and writes them, the client's options and events,
 * and the interfaces an app may implement (storage, WebSocket). Only what the SDK touches
 * of the wire is typed; unknown fields are kept and ignored.
 */

import type { SwitchboardError } from './errors.js';

// --- the wire ----------------------------------------------------------------------------

/** The event envelope (docs/protocol.md §5 `evt`). */
export interface Envelope<D = unknown> {
  id: string;
  type: string;
  timestamp: string;
  source?: string;
  subject?: string;
  actor?: { id: string; type: string };
  data: D;
  metadata?: { correlationId?: string; causationId?: string; version?: string };
}

/** A durable event as delivered on a channel: the `evt` frame without `op`. */
export interface ChannelEvent<D = unknown> {
  /** The channel exactly as subscribed (an alias stays an alias). */
  ch: string;
  /** The `EVENTS` stream sequence: increasing per channel, not contiguous. */
  seq: number;
  event: Envelope<D>;
}

/** An ephemeral signal (`sig` frame). */
export interface Signal<D = unknown> {
  ch: string;
  from: string;
  type: string;
  data: D;
}

/** Where a subscription starts: one of the three `since` forms. */
export type Since = { seq: number; epoch: string } | { time: string } | { last: number };

export type PresenceStatus = 'online' | 'away' | 'busy' | 'invisible';

/** `user.presence` data on `presence:<user>`. */
export interface PresenceInfo {
  user: string;
  status: 'online' | 'away' | 'busy' | 'offline';
  devices?: number;
  lastSeen?: string;
  text?: string;
}

/** One entry of a `who` answer. */
export interface Member {
  user: string;
  status: string;
}

/** `message.receipt` data. */
export interface ReceiptData {
  user: string;
  delivered?: number;
  read?: number;
}

/** `user.notification` data. */
export interface NotificationData {
  id: string;
  category: string;
  title?: string;
  message?: string;
  priority?: 'low' | 'normal' | 'high' | 'urgent';
  ref?: { channel: string; seq: number };
  unread?: number;
  createdAt?: string;
  read?: boolean;
}

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'rate_limited'
  | 'too_large'
  | 'unavailable'
  | 'internal';

export type ByeCode =
  | 'token_expired'
  | 'draining'
  | 'slow_consumer'
  | 'rate_limited'
  | 'protocol_error'
  | 'unauthorized';

/** Any frame the server sends. */
export interface ServerFrame {
  op: 'welcome' | 'ok' | 'err' | 'evt' | 'sig' | 'unsubbed' | 'bye' | 'pong';
  id?: number;
  // welcome
  user?: string;
  session?: string;
  heartbeat_ms?: number;
  // ok
  ch?: string;
  seq?: number;
  epoch?: string;
  recovered?: boolean;
  event_id?: string;
  events?: Array<{ op: 'evt'; ch: string; seq: number; event: Envelope }>;
  result?: unknown;
  members?: Member[];
  // evt / sig
  event?: Envelope;
  from?: string;
  type?: string;
  data?: unknown;
  // err / unsubbed / bye
  code?: string;
  message?: string;
  reconnect?: boolean;
}

/** Any frame the client sends. */
export type ClientFrame = { op: string; id?: number } & Record<string, unknown>;

// --- the client ------------------------------------------------------------------------------

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

export type Transport = 'websocket' | 'sse';

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
  transport?: Transport;
}

/** Counters useful in tests and dashboards (`sb.stats`). */
export interface ClientStats {
  /** Events dropped because they were at or below a channel's cursor, or seen before. */
  duplicatesDropped: number;
  reconnects: number;
  eventsDelivered: number;
}

export type TokenReason = 'connect' | 'refresh' | 'expired' | 'reconnect';
/** Returns a JWT; called to connect, and again before the current one expires. */
export type TokenProvider = (context: { reason: TokenReason }) => string | Promise<string>;

/** Whether the app is in front of the user (React Native's AppState, or the page's visibility). */
export type AppState = 'active' | 'background';

export interface BackoffOptions {
  /** The ceiling of the first retry's delay (ms). Default 500. */
  initialMs?: number;
  /** The largest ceiling (ms). Default 30,000. */
  maxMs?: number;
  /** Growth of the ceiling per attempt. Default 2. */
  factor?: number;
}

/**
 * Where the SDK keeps what must survive a page reload (the offline publish queue).
 * Methods may be synchronous or return promises (e.g. IndexedDB, AsyncStorage).
 */
export interface StorageAdapter {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/** The part of the WHATWG `WebSocket` the SDK uses (browsers, React Native, and `ws` in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

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
  transport?: 'auto' | Transport;
  /** Where queued messages survive reloads; default localStorage, else memory. */
  storage?: StorageAdapter;
  /** Prefix of the storage keys. Default `switchboard`. */
  storageKey?: string;
  /**
   * Uniform random numbers in [0, 1) for backoff jitter and idempotency keys. Default
   * `crypto.getRandomValues` when there is one, else `Math.random`.
   */
  random?: () => number;
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
  /**
   * Automatic away: with the page hidden (or `setAppState('background')`) and no input for
   * this long, the status becomes `away`; input or coming back sets `online` again. Only an
   * `online` status is changed. 0 turns it off. Default 300,000 (5 minutes).
   */
  idleAfterMs?: number;
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

export type MessageStatus = 'sending' | 'sent' | 'delivered' | 'read' | 'failed';

export interface TypingOptions {
  /** Send `typing: true` at most this often while typing. Default 2,000 ms. */
  throttleMs?: number;
  /** Send `typing: false` after this long without a keystroke. Default 4,000 ms. */
  idleMs?: number;
  /** Forget another user's indicator this long after their last signal. Default 6,000 ms. */
  expireMs?: number;
}

export interface NotificationList {
  items: NotificationData[];
  unread: number;
  next: string | null;
}

/** The newest message of a conversation that is not deleted, as `inbox.list` shows it. */
export interface InboxLast {
  seq: number;
  id: string;
  type: string;
  actor?: { id: string };
  text?: string;
  timestamp: string;
}

/** One entry of `inbox.list` (docs/protocol.md §10.11, The inbox). */
export interface InboxEntry {
  ch: string;
  /** `message.new` from others above the read cursor; a muted entry keeps its own. */
  unread: number;
  /** The user's read cursor (0 when never read). */
  read: number;
  /** null when the conversation has no message. */
  last: InboxLast | null;
  muted: boolean;
  /** The last activity (a new message): the list is ordered by it, newest first. */
  updatedAt: string;
}

export interface InboxPage {
  /** Most recent activity first. */
  conversations: InboxEntry[];
  /** The sum of `unread` over unmuted entries (all of them, not only this page's). */
  unread: number;
  /** Pass as `before` for the next (older) page; null at the end. */
  next: string | null;
}

/**
 * The data of an `inbox` signal on `user:<me>`: an entry's latest state, or its removal
 * (the user left), with the new `total` unread over unmuted conversations.
 */
export type InboxUpdate = (InboxEntry & { removed?: false; total: number }) | { ch: string; removed: true; total: number };

/** The inbox as `sb.inbox` keeps it: the pages read so far, kept current by signals. */
export interface InboxState {
  /** Most recent activity first. */
  conversations: InboxEntry[];
  /** The same entries by channel. */
  entries: ReadonlyMap<string, InboxEntry>;
  /** Unread over unmuted conversations (all of them, loaded or not). */
  total: number;
  /** Whether there are older conversations (`loadMore`). */
  hasMore: boolean;
  /** Whether the first page has arrived. */
  ready: boolean;
}

export interface SearchOptions {
  /** Only this conversation. */
  ch?: string;
  /** At most this many results (the server caps it). */
  limit?: number;
  /** The `next` of the previous page. */
  before?: string;
}

/** One hit of `messages.search`: the message as the archive holds it (latest text). */
export interface SearchResult<D = unknown> {
  ch: string;
  seq: number;
  event: Envelope<D>;
  /** The matching part of the text: plain text (not HTML), matched words as `**word**`. */
  snippet: string;
}

export interface SearchPage<D = unknown> {
  /** Newest first. */
  results: SearchResult<D>[];
  next: string | null;
}

export interface PushEnableOptions {
  /** URL of the service worker script (e.g. the package's `switchboard-sw.js`, served by the app). */
  serviceWorker: string;
  /** The registration's scope; default the script's folder. */
  scope?: string;
  /**
   * This device's id for `push.subscribe` (1-128 of `[A-Za-z0-9._:-]`); default the
   * client's `device` option when it fits, else a random id kept in storage.
   */
  device?: string;
}

/** What `push.enable` registered. */
export interface PushRegistration {
  device: string;
  endpoint: string;
}
