/**
 * Presence: the user's own status (`presence` frame, re-sent after every reconnect),
 * watching another user (`presence:<user>` carries `user.presence` events) and asking
 * who is in a channel now (`who`).
 */

import type { Switchboard } from './client.js';
import { SwitchboardError } from './errors.js';
import type { Member, PresenceInfo, PresenceStatus } from './protocol.js';

export class Presence {
  private mine: { status: PresenceStatus; text?: string } | undefined;

  constructor(private readonly client: Switchboard) {}

  /** Sets this user's status; kept and sent again after every reconnect. */
  async setStatus(status: PresenceStatus, text?: string): Promise<void> {
    this.mine = text === undefined ? { status } : { status, text };
    await this.client._request({ op: 'presence', ...this.mine });
  }

  /** @internal Called on every new WebSocket connection. */
  resend(): void {
    if (!this.mine) return;
    this.client._request({ op: 'presence', ...this.mine }).catch((error: unknown) => {
      if (error instanceof SwitchboardError && error.code !== 'disconnected') this.client._report(error);
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
    return this.client.subscribe<PresenceInfo>(
      `presence:${user}`,
      { types: ['user.presence'], since: { last: 1 }, onError: options.onError },
      (event) => {
        if (event.event.data && typeof event.event.data === 'object') handler(event.event.data);
      },
    );
  }

  /** Who may watch this user's presence: `everyone`, `contacts` (the default) or `nobody`. */
  async setPrivacy(visibility: 'everyone' | 'contacts' | 'nobody'): Promise<void> {
    await this.client.rpc('presence.privacy.set', { visibility });
  }

  /** Who has a connection subscribed to the channel now, with their status. */
  async who(ch: string): Promise<Member[]> {
    const ok = await this.client._request({ op: 'who', ch });
    return ok.members ?? [];
  }
}
