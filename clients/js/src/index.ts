/**
 * `@switchboard/client`: the TypeScript SDK of Switchboard's `switchboard.v1` protocol,
 * for browsers (no dependencies), Node 20 (pass `WebSocket` from the `ws` package) and
 * React Native (pass `storage`; nothing needs the DOM).
 */

export { Switchboard, type ClientEvents } from './client.js';
export { SwitchboardError } from './errors.js';
export { OutgoingMessage } from './outbox.js';
export { Typing } from './typing.js';
export { Presence } from './presence.js';
export { Notifications } from './notifications.js';
export { Inbox, type InboxEvents } from './inbox.js';
export { Push } from './push.js';
export { memoryStorage, defaultStorage } from './storage.js';
export { SseParser, type SseMessage } from './sse.js';
export { backoffDelay, httpBase, typeMatches, typesMatch, tokenClaims } from './util.js';
export type * from './types.js';
