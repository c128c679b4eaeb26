/**
 * `@switchboard/react`: a provider and hooks over `@switchboard/client`. Each hook
 * subscribes in an effect and unsubscribes when the component unmounts or its arguments
 * change; several components on one channel share one server subscription (the SDK does).
 */

import {
  createElement,
  createContext,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react';
import {
  Switchboard,
  SwitchboardError,
  type ChannelEvent,
  type ConnectionState,
  type GapInfo,
  type InboxEntry,
  type InboxState,
  type Member,
  type NotificationData,
  type PresenceInfo,
  type Since,
  type SwitchboardOptions,
  type Transport,
} from '@switchboard/client';

const Context = createContext<Switchboard | null>(null);

export interface SwitchboardProviderProps {
  /** A client the app made (and closes). */
  client?: Switchboard;
  /** Or options: the provider makes the client, connects it on mount and destroys it on unmount. */
  options?: SwitchboardOptions;
  children?: ReactNode;
}

/** Makes a client available to the hooks below it. Give either `client` or `options`. */
export function SwitchboardProvider({ client, options, children }: SwitchboardProviderProps): ReturnType<typeof createElement> {
  if ((client === undefined) === (options === undefined)) {
    throw new TypeError('SwitchboardProvider needs exactly one of `client` or `options`');
  }
  const [owned] = useState(() => (client ? undefined : new Switchboard(options!)));
  useEffect(() => {
    if (!owned) return undefined;
    owned.connect().catch(() => undefined);
    return () => owned.destroy();
  }, [owned]);
  return createElement(Context.Provider, { value: client ?? owned! }, children);
}

/** The provider's client. */
export function useSwitchboard(): Switchboard {
  const client = useContext(Context);
  if (!client) throw new Error('Switchboard hooks must be used inside <SwitchboardProvider>');
  return client;
}

export interface ConnectionInfo {
  state: ConnectionState;
  /** Why the state last changed (`welcome`, `closed`, `bye:draining`...). */
  reason: string | undefined;
  transport: Transport | undefined;
  latency: number | undefined;
  user: string | undefined;
}

/** The connection's state, re-rendering on every change (and on each latency probe). */
export function useConnectionState(): ConnectionInfo {
  const sb = useSwitchboard();
  const cache = useRef<{ key: string; value: ConnectionInfo } | undefined>(undefined);
  const reason = useRef<string | undefined>(undefined);
  const subscribe = useCallback(
    (notify: () => void) => {
      const offState = sb.on('state', (change) => {
        reason.current = change.reason;
        notify();
      });
      const offLatency = sb.on('latency', notify);
      return () => {
        offState();
        offLatency();
      };
    },
    [sb],
  );
  const snapshot = (): ConnectionInfo => {
    const value = { state: sb.state, reason: reason.current, transport: sb.transport, latency: sb.latency, user: sb.user };
    const key = JSON.stringify(value);
    if (cache.current?.key !== key) cache.current = { key, value };
    return cache.current.value;
  };
  return useSyncExternalStore(subscribe, snapshot, snapshot);
}

export interface ChannelOptions {
  types?: string[];
  since?: Since;
  /** How many of the latest events to keep. Default 100. */
  keep?: number;
  /** Called once per event (in seq order), besides keeping it. */
  onEvent?: (event: ChannelEvent) => void;
}

export interface ChannelView<D = unknown> {
  /** The latest `keep` events, ascending. */
  events: ChannelEvent<D>[];
  status: 'subscribing' | 'live' | 'error';
  error: SwitchboardError | undefined;
  /** The last gap reported (events lost, stream recreated): refetch what you show. */
  gap: GapInfo | undefined;
}

/** Subscribes to a channel while mounted: each event once, in seq order, across reconnects. */
export function useChannel<D = unknown>(ch: string, options: ChannelOptions = {}): ChannelView<D> {
  const sb = useSwitchboard();
  const keep = options.keep ?? 100;
  if (!Number.isInteger(keep) || keep < 0) throw new TypeError(`useChannel: keep must be a non-negative integer, not ${String(options.keep)}`);
  const onEvent = useRef(options.onEvent);
  onEvent.current = options.onEvent;
  const types = options.types ? JSON.stringify(options.types) : '';
  const since = options.since ? JSON.stringify(options.since) : '';
  const [view, setView] = useState<ChannelView<D>>({ events: [], status: 'subscribing', error: undefined, gap: undefined });
  useEffect(() => {
    setView({ events: [], status: 'subscribing', error: undefined, gap: undefined });
    return sb.subscribe<D>(
      ch,
      {
        types: types ? (JSON.parse(types) as string[]) : undefined,
        since: since ? (JSON.parse(since) as Since) : undefined,
        onSubscribed: () => setView((v) => (v.status === 'live' ? v : { ...v, status: 'live' })),
        onGap: (gap) => setView((v) => ({ ...v, gap })),
        onError: (error) => setView((v) => ({ ...v, status: 'error', error })),
      },
      (event) => {
        onEvent.current?.(event as ChannelEvent);
        if (keep > 0) setView((v) => ({ ...v, events: [...v.events, event].slice(-keep) }));
      },
    );
  }, [sb, ch, types, since, keep]);
  return view;
}

/** A user's presence (`presence:<user>`), or undefined until known or when not allowed. */
export function usePresence(user: string | undefined): PresenceInfo | undefined {
  const sb = useSwitchboard();
  const [info, setInfo] = useState<PresenceInfo | undefined>(undefined);
  useEffect(() => {
    setInfo(undefined);
    if (!user) return undefined;
    return sb.presence.watch(user, setInfo, { onError: () => setInfo(undefined) });
  }, [sb, user]);
  return info;
}

export interface WhoView {
  members: Member[];
  error: SwitchboardError | undefined;
  refresh: () => void;
}

/**
 * Who is in a channel now (`who`): asked on every connection, when a signal arrives on
 * the channel (joins and leaves come as signals), and every `refreshMs` (default 15 s).
 */
export function useWho(ch: string, options: { refreshMs?: number } = {}): WhoView {
  const sb = useSwitchboard();
  const refreshMs = options.refreshMs ?? 15_000;
  const [view, setView] = useState<{ members: Member[]; error: SwitchboardError | undefined }>({ members: [], error: undefined });
  const [tick, setTick] = useState(0);
  const refresh = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    let live = true;
    const ask = (): void => {
      sb.presence.who(ch).then(
        (members) => live && setView({ members, error: undefined }),
        (error: unknown) => live && error instanceof SwitchboardError && error.code !== 'disconnected' && setView((v) => ({ ...v, error })),
      );
    };
    if (sb.state === 'connected') ask();
    const offWelcome = sb.on('welcome', ask);
    const offSignal = sb.on('signal', (signal) => signal.ch === ch && ask());
    const timer = refreshMs > 0 ? setInterval(ask, refreshMs) : undefined;
    return () => {
      live = false;
      offWelcome();
      offSignal();
      if (timer) clearInterval(timer);
    };
  }, [sb, ch, refreshMs, tick]);
  return { ...view, refresh };
}

export interface TypingView {
  /** Others typing now. */
  users: string[];
  /** Call on every keystroke. */
  keystroke: () => void;
  /** Call when the message is sent. */
  stop: () => void;
}

/** Typing indicators on a conversation. */
export function useTyping(ch: string): TypingView {
  const sb = useSwitchboard();
  const typing = useMemo(() => sb.typing(ch), [sb, ch]);
  const [users, setUsers] = useState<string[]>([]);
  useEffect(() => typing.onChange(setUsers), [typing]);
  return { users, keystroke: useCallback(() => typing.keystroke(), [typing]), stop: useCallback(() => typing.stop(), [typing]) };
}

export interface NotificationsView {
  /** The unread count, undefined until known. */
  unread: number | undefined;
  /** The newest notifications (first page, then each new one). */
  items: NotificationData[];
  error: SwitchboardError | undefined;
  markRead: (ids: string[] | 'all') => Promise<number>;
}

/** The user's notifications: the live unread count and the newest items. */
export function useNotifications(options: { limit?: number } = {}): NotificationsView {
  const sb = useSwitchboard();
  const limit = options.limit ?? 20;
  const [unread, setUnread] = useState<number | undefined>(sb.notifications.unread);
  const [items, setItems] = useState<NotificationData[]>([]);
  const [error, setError] = useState<SwitchboardError | undefined>(undefined);
  useEffect(() => {
    let live = true;
    const load = (): void => {
      sb.notifications.list({ limit }).then(
        (page) => live && (setItems(page.items), setError(undefined)),
        (e: unknown) => live && e instanceof SwitchboardError && e.code !== 'disconnected' && setError(e),
      );
    };
    const offUnread = sb.notifications.onUnread(setUnread);
    const offNew = sb.notifications.onNotification((n) => setItems((list) => [n, ...list.filter((x) => x.id !== n.id)].slice(0, limit)));
    const offWelcome = sb.on('welcome', load);
    if (sb.state === 'connected') load();
    return () => {
      live = false;
      offUnread();
      offNew();
      offWelcome();
    };
  }, [sb, limit]);
  const markRead = useCallback((ids: string[] | 'all') => sb.notifications.markRead(ids), [sb]);
  return { unread, items, error, markRead };
}

export interface InboxView extends InboxState {
  /** The latest refusal of `inbox.list` (cleared by the next page that arrives). */
  error: unknown;
  /** Reads the next (older) page into `conversations`. */
  loadMore: () => Promise<void>;
  /** Mutes or unmutes a conversation (its entry stays, it leaves `total`). */
  mute: (ch: string, muted?: boolean) => Promise<InboxEntry>;
}

/**
 * The user's inbox (docs/protocol.md §10.11, The inbox): the conversations with their unread counts
 * and last message, most recent activity first, and the `total` unread over unmuted ones.
 * The SDK reads `inbox.list` on every (re)connection and applies the `inbox` signals.
 */
export function useInbox(options: { limit?: number } = {}): InboxView {
  const sb = useSwitchboard();
  const limit = options.limit;
  const [state, setState] = useState<InboxState>(() => sb.inbox.state);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const offError = sb.inbox.on('error', setError);
    const stop = sb.inbox.watch(
      (inbox) => {
        setState(inbox);
        if (inbox.ready) setError(undefined);
      },
      limit === undefined ? {} : { limit },
    );
    return () => {
      offError();
      stop();
    };
  }, [sb, limit]);
  const loadMore = useCallback(() => sb.inbox.loadMore(limit), [sb, limit]);
  const mute = useCallback((ch: string, muted = true) => sb.inbox.mute(ch, muted), [sb]);
  return { ...state, error, loadMore, mute };
}
