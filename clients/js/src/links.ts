/**
 * Links: one physical connection to one edge, WebSocket or SSE. A link owns its transport
 * (the socket, or the `fetch` stream with its URL, headers and cursor) and reports frames
 * and how it ended; the connection decides everything else (auth, resume, retry). After
 * `close()` a link calls nothing back.
 */

import { SseParser } from './sse.js';
import type { ClientFrame, ServerFrame, Transport, WebSocketConstructor, WebSocketLike } from './types.js';
import { SwitchboardError } from './errors.js';
import { httpBase, tokenClaims, utf8 } from './util.js';

export interface LinkEnd {
  /** Whether the link was ever open (the socket opened / the stream answered 200). */
  opened: boolean;
  /** WebSocket close code, when there was one. */
  closeCode?: number;
  /** HTTP status of a refused SSE request. */
  httpStatus?: number;
  /** The protocol error code of a refused SSE request. */
  errorCode?: string;
  message?: string;
}

export interface LinkHandlers {
  /** The link is open. A WebSocket link still needs `hello`; an SSE link is authenticated. */
  open(): void;
  frame(frame: ServerFrame): void;
  end(end: LinkEnd): void;
}

export interface Link {
  readonly kind: Transport;
  readonly url: string;
  /** Sends a frame (WebSocket only; an SSE link carries nothing upstream). */
  send(frame: ClientFrame): void;
  close(): void;
}

function decode(data: unknown): string | undefined {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return utf8(new Uint8Array(data));
  if (ArrayBuffer.isView(data)) return utf8(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return undefined;
}

function parse(text: string | undefined): ServerFrame | undefined {
  if (text === undefined) return undefined;
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value === 'object' && value !== null && typeof (value as { op?: unknown }).op === 'string') {
      return value as ServerFrame;
    }
  } catch {
    // An unreadable frame is skipped; the protocol never sends one.
  }
  return undefined;
}

export class WebSocketLink implements Link {
  readonly kind = 'websocket';
  private socket: WebSocketLike;
  private opened = false;
  private done = false;

  constructor(
    readonly url: string,
    Ctor: WebSocketConstructor,
    private readonly handlers: LinkHandlers,
  ) {
    this.socket = new Ctor(url, 'switchboard.v1');
    this.socket.onopen = () => {
      if (this.done) return;
      this.opened = true;
      handlers.open();
    };
    this.socket.onmessage = (event) => {
      if (this.done) return;
      const frame = parse(decode(event.data));
      if (frame) handlers.frame(frame);
    };
    this.socket.onclose = (event) => this.finish({ opened: this.opened, closeCode: event.code, message: event.reason });
    this.socket.onerror = () => {
      // A close event always follows; it carries what we need.
    };
  }

  send(frame: ClientFrame): void {
    if (this.done || this.socket.readyState !== 1) return;
    this.socket.send(JSON.stringify(frame));
  }

  close(): void {
    this.done = true;
    try {
      this.socket.close(1000, 'client');
    } catch {
      // Closing a socket that never opened may throw in some implementations.
    }
  }

  private finish(end: LinkEnd): void {
    if (this.done) return;
    this.done = true;
    this.handlers.end(end);
  }
}

export interface SseLinkOptions {
  /** The edge's WebSocket URL; the stream is `GET /v1/sse` on the same host. */
  wsUrl: string;
  token: string;
  channels: string[];
  /** The opaque cursor of the previous stream (`Last-Event-ID`), if any. */
  cursor: string | undefined;
  fetch: typeof fetch;
}

/**
 * Receive-only link: `GET /v1/sse?ch=...` read with `fetch`, so the token travels in
 * `Authorization` and the cursor in `Last-Event-ID` (an `EventSource` can send neither).
 * It keeps the stream's latest cursor, and calls `POST /v1/rpc/<method>` for RPCs, since
 * nothing travels upstream on the stream (docs/protocol.md, HTTP fallbacks).
 */
export class SseLink implements Link {
  readonly kind = 'sse';
  readonly url: string;
  /** The latest event id of the stream: where the next stream resumes. */
  cursor: string | undefined;
  /** The user the token names (the stream has no `welcome`). */
  readonly user: string | undefined;
  private readonly abort = new AbortController();
  private readonly base: string;
  private done = false;

  constructor(
    private readonly options: SseLinkOptions,
    private readonly handlers: LinkHandlers,
  ) {
    this.base = httpBase(options.wsUrl);
    const channels = options.channels.length > 0 ? options.channels : ['system:broadcast'];
    this.url = `${this.base}/v1/sse?${channels.map((ch) => `ch=${encodeURIComponent(ch)}`).join('&')}`;
    this.cursor = options.cursor;
    this.user = tokenClaims(options.token)?.sub;
    void this.run();
  }

  send(): void {
    // Nothing travels upstream on SSE; the connection never calls this in SSE mode.
  }

  close(): void {
    this.done = true;
    this.abort.abort();
  }

  /** `POST /v1/rpc/<method>` with this stream's token. */
  async rpc<R>(method: string, params: unknown, trace?: string): Promise<R> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.options.token}`, 'Content-Type': 'application/json' };
    if (trace) headers.traceparent = trace;
    const response = await this.options.fetch(`${this.base}/v1/rpc/${encodeURIComponent(method)}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(params ?? {}),
    });
    const body = (await response.json().catch(() => ({}))) as { result?: R; code?: string; message?: string };
    if (!response.ok) throw new SwitchboardError((body.code ?? 'internal') as never, body.message ?? `HTTP ${response.status}`);
    return body.result as R;
  }

  private async run(): Promise<void> {
    let opened = false;
    const headers: Record<string, string> = { Accept: 'text/event-stream', Authorization: `Bearer ${this.options.token}` };
    if (this.cursor) headers['Last-Event-ID'] = this.cursor;
    try {
      const response = await this.options.fetch(this.url, { headers, signal: this.abort.signal, cache: 'no-store' });
      if (!response.ok || !response.body) {
        let errorCode: string | undefined;
        let message: string | undefined;
        try {
          const body = (await response.json()) as { code?: string; message?: string };
          errorCode = body.code;
          message = body.message;
        } catch {
          // Not the JSON error body: the status says enough.
        }
        this.finish({ opened, httpStatus: response.status, errorCode, message });
        return;
      }
      opened = true;
      if (this.done) return;
      this.handlers.open();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.done) break;
        for (const message of parser.push(decoder.decode(value, { stream: true }))) {
          const frame = parse(message.data);
          if (message.id) this.cursor = message.id;
          if (frame && !this.done) this.handlers.frame(frame);
        }
      }
      this.finish({ opened });
    } catch (error) {
      this.finish({ opened, message: error instanceof Error ? error.message : String(error) });
    }
  }

  private finish(end: LinkEnd): void {
    if (this.done) return;
    this.done = true;
    this.handlers.end(end);
  }
}
