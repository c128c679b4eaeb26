/**
 * The wire shapes of `switchboard.v1` (docs/protocol.md), as the SDK reads and writes
 * them. Only what the SDK touches is typed; unknown fields are kept and ignored.
 */

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
