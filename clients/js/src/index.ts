/**
 * `@switchboard/client`: the TypeScript SDK of Switchboard's `switchboard.v1` protocol,
 * for browsers (no dependencies) and Node 20 (pass `WebSocket` from the `ws` package).
 */

export { Switchboard, httpBase } from './client.js';
export type {
  ConnectionState,
  GapInfo,
  HistoryPage,
  ReceiptUpdate,
  StateChange,
  SubscribeOptions,
  SwitchboardOptions,
  TokenProvider,
  TokenReason,
} from './client.js';
export { SwitchboardError } from './errors.js';
export { OutgoingMessage, type MessageStatus } from './outbox.js';
export { Typing, type TypingOptions } from './typing.js';
export { Presence } from './presence.js';
export { Notifications, type NotificationList } from './notifications.js';
export { memoryStorage, defaultStorage, type StorageAdapter } from './storage.js';
export { SseParser, type SseMessage } from './sse.js';
export type { WebSocketConstructor, WebSocketLike } from './links.js';
export { backoffDelay, typeMatches, typesMatch, tokenClaims, type BackoffOptions } from './util.js';
export type * from './protocol.js';
