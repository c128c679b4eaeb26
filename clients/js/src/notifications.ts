/**
 * Notifications: the `notifications.*` RPCs of the notifications worker, and a live
 * unread count from `user.notification` / `notification.read` events on
 * `user:<me>:notifications` (every device of the user sees the same count).
 */

import { Emitter } from './emitter.js';
import type { ChannelEvent, NotificationData, NotificationList, SubscribeOptions } from './types.js';

/** What notifications need from the client. */
export interface NotificationsHost {
  rpc<R>(method: string, params: unknown): Promise<R>;
  subscribe(ch: string, options: SubscribeOptions, handler: (event: ChannelEvent) => void): () => void;
  /** Calls `listener` with the user once known (at once if it is). */
  whenUser(listener: (user: string) => void): void;
}

export interface NotificationEvents {
  unread: number;
  notification: NotificationData;
}

export class Notifications extends Emitter<NotificationEvents> {
  /** The latest unread count known, or undefined before any. */
  unread: number | undefined;
  private watching = false;
  private liveAfter = Number.POSITIVE_INFINITY;
  private subscribed = false;
  /** Count events seen, so an RPC answer older than an event does not win. */
  private events = 0;
  private readonly readyWaiters: Array<() => void> = [];

  constructor(private readonly host: NotificationsHost) {
    super();
  }

  /** A page of notifications, newest first (`before`: the `next` of the previous page). */
  async list(params: { limit?: number; before?: string; unreadOnly?: boolean } = {}): Promise<NotificationList> {
    if (params.limit !== undefined && (!Number.isInteger(params.limit) || params.limit < 1)) {
      throw new TypeError(`notifications.list: limit must be a positive integer, not ${String(params.limit)}`);
    }
    const wire: Record<string, unknown> = {};
    if (params.limit !== undefined) wire.limit = params.limit;
    if (params.before !== undefined) wire.before = params.before;
    if (params.unreadOnly !== undefined) wire.unread_only = params.unreadOnly;
    const mark = this.events;
    const result = await this.host.rpc<NotificationList>('notifications.list', wire);
    // An event that arrived meanwhile carries a newer count than this answer.
    if (typeof result?.unread === 'number' && mark === this.events) this.setUnread(result.unread);
    return result;
  }

  /** Marks notifications read (`'all'` for every one); resolves with the new unread count. */
  async markRead(ids: string[] | 'all'): Promise<number> {
    if (ids !== 'all' && (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string'))) {
      throw new TypeError("notifications.markRead takes an array of notification ids or 'all'");
    }
    const params = ids === 'all' ? { all: true } : { ids };
    const mark = this.events;
    const result = await this.host.rpc<{ unread: number }>('notifications.read', params);
    if (typeof result?.unread === 'number' && mark === this.events) this.setUnread(result.unread);
    return result.unread;
  }

  /** Notification preferences per category. */
  preferences(): Promise<{ categories: Record<string, Record<string, boolean>> }> {
    return this.host.rpc('notifications.preferences.get', {});
  }

  setPreferences(categories: Record<string, Record<string, boolean>>): Promise<unknown> {
    return this.host.rpc('notifications.preferences.set', { categories });
  }

  /** Resolves once the live stream of the user's notifications is subscribed (starts it if needed). */
  whenLive(): Promise<void> {
    this.watch();
    if (this.subscribed) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /** Calls `listener` with the unread count now (when known) and on every change. */
  onUnread(listener: (unread: number) => void): () => void {
    this.watch();
    if (this.unread !== undefined) listener(this.unread);
    return this.on('unread', listener);
  }

  /** Calls `listener` for every new notification. */
  onNotification(listener: (notification: NotificationData) => void): () => void {
    this.watch();
    return this.on('notification', listener);
  }

  private setUnread(unread: number): void {
    if (unread === this.unread) return;
    this.unread = unread;
    this.emit('unread', unread);
  }

  /** Subscribes to the user's notification alias once the user is known. */
  private watch(): void {
    if (this.watching) return;
    this.watching = true;
    const start = (user: string): void => {
      this.host.subscribe(
        `user:${user}:notifications`,
        {
          // The latest stored count primes the bell; the service's answer then wins.
          since: { last: 50 },
          onSubscribed: ({ seq, resumed }) => {
            if (!resumed || this.liveAfter === Number.POSITIVE_INFINITY) this.liveAfter = seq;
            this.list({ limit: 1 }).catch(() => undefined);
            this.subscribed = true;
            this.readyWaiters.splice(0).forEach((resolve) => resolve());
          },
        },
        (event) => this.onEvent(event),
      );
    };
    this.host.whenUser(start);
  }

  private onEvent(event: ChannelEvent): void {
    const data = event.event.data as (NotificationData & { ids?: string[] }) | null;
    if (!data || typeof data !== 'object') return;
    this.events++;
    if (typeof data.unread === 'number') this.setUnread(data.unread);
    if (event.event.type === 'user.notification' && event.seq > this.liveAfter) this.emit('notification', data);
  }
}
