/**
 * Presence: the user's own status (`presence` frame, re-sent after every reconnect, and
 * `away` while the app is idle in the background: see autoaway.ts), watching another user
 * (`presence:<user>` carries `user.presence` events) and asking who is in a channel now
 * (`who`).
 */

import { SwitchboardError } from './errors.js';
import type { ChannelEvent, ClientFrame, Member, PresenceInfo, PresenceStatus, ServerFrame, SubscribeOptions } from './types.js';

/** What presence needs from the client. */
export interface PresenceHost {
  request(frame: ClientFrame): Promise<ServerFrame>;
  rpc<R>(method: string, params: unknown): Promise<R>;
  subscribe(ch: string, options: SubscribeOptions, handler: (event: ChannelEvent) => void): () => void;
  /** An error not tied to a call (a refused status sent on reconnect). */
  report(error: SwitchboardError): void;
}

const STATUSES: readonly PresenceStatus[] = ['online', 'away', 'busy', 'invisible'];
const VISIBILITIES = ['everyone', 'contacts', 'nobody'] as const;

export class Presence {
  private mine: { status: PresenceStatus; text?: string } | undefined;
  private idle = false;

  constructor(private readonly host: PresenceHost) {}

  /** The status this device shows: the chosen one, or `away` while idle if it was `online`. */
  get status(): PresenceStatus {
    const chosen = this.mine?.status ?? 'online';
    return this.idle && chosen === 'online' ? 'away' : chosen;
  }

  /** Sets this user's status; kept and sent again after every reconnect. */
  async setStatus(status: PresenceStatus, text?: string): Promise<void> {
    if (!STATUSES.includes(status)) throw new TypeError(`presence status must be one of ${STATUSES.join(', ')}, not ${JSON.stringify(status)}`);
    if (text !== undefined && typeof text !== 'string') throw new TypeError('presence text must be a string');
    this.mine = text === undefined ? { status } : { status, text };
    await this.host.request(this.frame());
  }

  /** @internal Automatic away (autoaway.ts): changes only an `online` status. */
  setIdle(idle: boolean): void {
    if (idle === this.idle) return;
    const before = this.status;
    this.idle = idle;
    if (this.status !== before) this.send();
  }

  /** @internal Called on every new WebSocket connection. */
  resend(): void {
    if (this.mine || this.idle) this.send();
  }

  private frame(): ClientFrame {
    const frame: ClientFrame = { op: 'presence', status: this.status };
    if (this.mine?.text !== undefined) frame.text = this.mine.text;
    return frame;
  }

  private send(): void {
    this.host.request(this.frame()).catch((error: unknown) => {
      if (error instanceof SwitchboardError && error.code !== 'disconnected' && error.code !== 'closed') this.host.report(error);
    });
  }

  /**
   * Follows a user's presence: calls `handler` with their latest known state (replayed),
   * then every change. Returns the function that stops watching.
   */
  watch(
    user: string,
    handler: (presence: PresenceInfo) => void,
    options: { onError?: (error: SwitchboardError) => void } = {},
  ): () => void {
    if (typeof user !== 'string' || user.length === 0) throw new TypeError('presence.watch needs a user id');
    return this.host.subscribe(
      `presence:${user}`,
      { types: ['user.presence'], since: { last: 1 }, onError: options.onError },
      (event) => {
        if (event.event.data && typeof event.event.data === 'object') handler(event.event.data as PresenceInfo);
      },
    );
  }

  /** Who may watch this user's presence: `everyone`, `contacts` (the default) or `nobody`. */
  async setPrivacy(visibility: 'everyone' | 'contacts' | 'nobody'): Promise<void> {
    if (!VISIBILITIES.includes(visibility)) throw new TypeError(`presence privacy must be one of ${VISIBILITIES.join(', ')}, not ${JSON.stringify(visibility)}`);
    await this.host.rpc('presence.privacy.set', { visibility });
  }

  /** Who has a connection subscribed to the channel now, with their status. */
  async who(ch: string): Promise<Member[]> {
    const ok = await this.host.request({ op: 'who', ch });
    return ok.members ?? [];
  }
}
