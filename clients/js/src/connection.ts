/**
 * The connection: one logical link to the edges that survives edges coming and going.
 *
 * It owns the state machine (idle -> connecting -> connected -> reconnecting -> ... ->
 * disconnected), the choice of edge and transport, the token (provider calls, in-band
 * refresh, `bye token_expired`), backoff, the latency probe, and request/reply matching by
 * `id`. It knows nothing of channels, messages or presence: frames that are not replies go
 * to its host, and the host is told when a link is up and when it is gone.
 */

import { Emitter } from './emitter.js';
import { SwitchboardError } from './errors.js';
import { SseLink, WebSocketLink, type Link, type LinkEnd } from './links.js';
import type {
  ByeCode,
  ClientStats,
  ClientFrame,
  ConnectionState,
  ServerFrame,
  StateChange,
  SwitchboardOptions,
  TokenProvider,
  TokenReason,
  Transport,
  WebSocketConstructor,
} from './types.js';
import { backoffDelay, httpBase, tokenClaims } from './util.js';

/** What the connection needs from the rest of the client. */
export interface ConnectionHost {
  /** A frame that is not the reply to a request (`evt`, `sig`, `unsubbed`, SSE's `ok`s, stray `err`s). */
  frame(frame: ServerFrame, transport: Transport): void;
  /** Authenticated on a new link (the state is already `connected`). */
  linkUp(transport: Transport): void;
  /** The link is gone (before the state changes). */
  linkDown(): void;
  /** The channels an SSE stream must carry (the host marks them as being subscribed). */
  sseChannels(): string[];
  /** SSE refused the whole stream because of one channel (`<channel>: why`). */
  sseRefused(ch: string, message: string): void;
}

export interface ConnectionEvents {
  state: StateChange;
  /** Round-trip time of the latest `ping`, in ms. */
  latency: number;
  welcome: { user: string; session: string; heartbeatMs: number; url: string };
  /** An error not tied to a call. */
  error: SwitchboardError;
}

export interface RequestCallbacks {
  resolve: (frame: ServerFrame) => void;
  reject: (error: SwitchboardError) => void;
}

interface Pending extends RequestCallbacks {
  timer: ReturnType<typeof setTimeout>;
}

const SSE_AFTER_WS_FAILURES = 3;
/** A connection that lasted this long resets the backoff. */
const STABLE_MS = 5_000;

export class Connection extends Emitter<ConnectionEvents> {
  state: ConnectionState = 'idle';
  /** The authenticated user (from `welcome`, or the token on SSE). */
  user: string | undefined;
  latency: number | undefined;
  transport: Transport | undefined;
  host: ConnectionHost | undefined;

  private readonly urls: string[];
  private urlIndex = 0;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly fetchImpl: typeof fetch | undefined;
  private readonly random: () => number;
  private readonly pending = new Map<number, Pending>();
  private link: Link | undefined;
  private token: string | undefined;
  private nextRequestId = 1;
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

  constructor(
    private readonly options: SwitchboardOptions,
    random: () => number,
    private readonly stats: ClientStats,
  ) {
    super();
    this.urls = Array.isArray(options.url) ? [...options.url] : [options.url];
    if (this.urls.length === 0) throw new TypeError('Switchboard: at least one url is needed');
    for (const url of this.urls) {
      if (typeof url !== 'string' || !/^(wss?:\/\/|\/)/i.test(url)) {
        throw new TypeError(`Switchboard: ${JSON.stringify(url)} is not a WebSocket URL (ws://host/v1/ws or wss://host/v1/ws)`);
      }
    }
    if (typeof options.token !== 'string' && typeof options.token !== 'function') {
      throw new TypeError('Switchboard: token must be a JWT string or a function that returns one');
    }
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.fetchImpl = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    this.random = random;
  }

  /** The token in use (undefined before the first connection and after `setToken`). */
  currentToken(): string | undefined {
    return this.token;
  }

  /** Skips the backoff wait when reconnecting (e.g. the network is back). */
  reconnectNow(reason = 'reconnect_now'): void {
    if (this.state !== 'reconnecting' || !this.reconnectTimer) return;
    this.clearReconnect();
    void this.open(reason, 'reconnect');
  }

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

  setToken(token: string | TokenProvider): void {
    if (typeof token !== 'string' && typeof token !== 'function') {
      throw new TypeError('Switchboard: token must be a JWT string or a function that returns one');
    }
    this.options.token = token;
    this.token = undefined;
    if (this.state === 'disconnected' && this.lastBye !== undefined) void this.connect().catch(() => undefined);
  }

  close(): void {
    this.generation++;
    this.teardownLink();
    this.clearReconnect();
    this.rejectPending(new SwitchboardError('closed', 'the client was closed'));
    this.setState('disconnected', { reason: 'client' });
  }

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

  /** Whether frames can be sent now (connected over WebSocket). */
  get canSend(): boolean {
    return this.state === 'connected' && this.transport === 'websocket' && this.link !== undefined;
  }

  /** Whether a link is up (either transport). */
  get isUp(): boolean {
    return this.state === 'connected' && this.link !== undefined;
  }

  // --- requests --------------------------------------------------------------------------

  /** Waits for a connection, sends a request frame and resolves with its `ok` (rejects with its `err`). */
  async request(frame: ClientFrame, timeoutMs = this.options.requestTimeoutMs ?? 10_000): Promise<ServerFrame> {
    await this.whenConnected(timeoutMs);
    return new Promise((resolve, reject) => this.requestNow(frame, { resolve, reject }, timeoutMs));
  }

  /**
   * Sends a request frame on the current link now and returns its `id`. The reply is
   * handed over synchronously, before any later frame of the same link is read (a `sub`'s
   * `ok` must be seen before the events that follow it).
   */
  requestNow(frame: ClientFrame, reply: RequestCallbacks, timeoutMs = this.options.requestTimeoutMs ?? 10_000): number {
    const id = this.nextRequestId++;
    const link = this.link;
    if (this.transport !== 'websocket' || !link) {
      reply.reject(new SwitchboardError('not_supported', `${frame.op} needs a WebSocket connection`));
      return id;
    }
    const timer = setTimeout(() => {
      this.pending.delete(id);
      reply.reject(new SwitchboardError('timeout', `no answer to ${frame.op} within ${timeoutMs} ms`));
    }, timeoutMs);
    this.pending.set(id, { ...reply, timer });
    link.send({ ...frame, id });
    return id;
  }

  /** Sends a frame that has no reply on success, if connected over WebSocket. */
  fire(frame: ClientFrame, withId = false): boolean {
    if (!this.canSend) return false;
    this.link!.send(withId ? { ...frame, id: this.nextRequestId++ } : frame);
    return true;
  }

  /** Calls a backend service: `rpc` frame, or `POST /v1/rpc/<method>` over SSE. */
  async rpc<R>(method: string, params: unknown, trace?: string): Promise<R> {
    if (this.link instanceof SseLink && this.state === 'connected') return this.link.rpc<R>(method, params, trace);
    const frame: ClientFrame = { op: 'rpc', method, params };
    if (trace) frame.trace = trace;
    const ok = await this.request(frame);
    return ok.result as R;
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

  /** Over SSE, opens a new stream (with the cursor) so it carries the current channels. */
  reopenSse(): void {
    if (this.transport !== 'sse' || this.state !== 'connected') return;
    if (this.sseReopenTimer) return;
    // Coalesce a burst of subscribe calls into one new stream.
    this.sseReopenTimer = setTimeout(() => {
      this.sseReopenTimer = undefined;
      const link = this.link;
      if (!(link instanceof SseLink) || !this.token) return;
      this.sseCursor = link.cursor;
      this.link = undefined;
      link.close();
      this.openSse(this.currentUrl(), this.token);
    }, 20);
  }

  // --- the state machine -----------------------------------------------------------------

  private setState(state: ConnectionState, detail: Omit<StateChange, 'state' | 'previous'>): void {
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous, ...detail });
  }

  private currentUrl(): string {
    return this.urls[this.urlIndex % this.urls.length]!;
  }

  private async chooseTransport(url: string): Promise<Transport> {
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
    const url = this.currentUrl();
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
        frame: (frame) => this.onFrame(frame, link),
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
    const channels = this.host?.sseChannels() ?? [];
    const link: SseLink = new SseLink({ wsUrl, token, channels, cursor: this.sseCursor, fetch: this.fetchImpl }, {
      open: () => this.onWelcome({ op: 'welcome', user: link.user, session: 'sse', heartbeat_ms: 0 }, link),
      frame: (frame) => this.onFrame(frame, link),
      end: (end) => this.onLinkEnd(link, end),
    });
    this.link = link;
  }

  /** Drops the current link as dead and reconnects. */
  private abandon(reason: string): void {
    if (!this.link) return;
    this.teardownLink();
    this.afterLinkLost(reason, undefined, false);
  }

  private teardownLink(): void {
    const link = this.link;
    this.link = undefined;
    if (link instanceof SseLink) this.sseCursor = link.cursor;
    link?.close();
    for (const timer of [this.connectTimer, this.pingTimer, this.refreshTimer, this.stableTimer, this.sseReopenTimer]) {
      if (timer) clearTimeout(timer);
    }
    this.connectTimer = this.pingTimer = this.refreshTimer = this.stableTimer = this.sseReopenTimer = undefined;
    this.host?.linkDown();
  }

  private clearReconnect(): void {
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
      this.host?.sseRefused(end.message.split(': ')[0] ?? '', end.message);
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
    if (!wasConnected || reason === 'open_failed' || reason === 'connect_timeout' || bye === 'draining') {
      // This edge did not work out (or is going away); the next attempt tries the next URL.
      this.urlIndex++;
    }
    this.scheduleReconnect(reason, closeCode);
  }

  private scheduleReconnect(reason: string, closeCode?: number): void {
    const bye = this.lastBye;
    // A draining edge asks us to move now; anything else backs off with full jitter.
    const delay = bye === 'draining' || bye === 'token_expired' ? 0 : backoffDelay(this.attempt, this.options.backoff, this.random);
    this.attempt++;
    this.stats.reconnects++;
    this.setState('reconnecting', { reason, attempt: this.attempt, delayMs: delay, closeCode });
    const generation = this.generation;
    const tokenReason: TokenReason = bye === 'token_expired' ? 'expired' : 'reconnect';
    if (bye === 'token_expired') this.token = undefined;
    this.clearReconnect();
    this.reconnectTimer = setTimeout(() => {
      if (generation !== this.generation) return;
      void this.open(reason, tokenReason);
    }, delay);
  }

  // --- frames ----------------------------------------------------------------------------

  private onFrame(frame: ServerFrame, link: Link): void {
    switch (frame.op) {
      case 'welcome':
        this.onWelcome(frame, link);
        return;
      case 'ok':
      case 'err':
      case 'pong': {
        const pending = frame.id !== undefined ? this.pending.get(frame.id) : undefined;
        if (pending) {
          this.pending.delete(frame.id!);
          clearTimeout(pending.timer);
          if (frame.op === 'err') pending.reject(new SwitchboardError((frame.code ?? 'internal') as never, frame.message ?? 'refused'));
          else pending.resolve(frame);
        } else {
          this.host?.frame(frame, link.kind);
        }
        return;
      }
      case 'bye':
        this.lastBye = frame.code as ByeCode;
        return;
      default:
        this.host?.frame(frame, link.kind);
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
    this.host?.linkUp(link.kind);
    if (link.kind === 'websocket') void this.ping().catch(() => undefined);
  }

  private rejectPending(error: SwitchboardError): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  // --- tokens ----------------------------------------------------------------------------

  private scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    const exp = this.token ? tokenClaims(this.token)?.exp : undefined;
    if (!exp || typeof this.options.token === 'string') return;
    const life = exp * 1000 - Date.now();
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
}

function expired(token: string): boolean {
  const exp = tokenClaims(token)?.exp;
  return typeof exp === 'number' && exp * 1000 <= Date.now();
}
