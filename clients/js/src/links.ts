/**
 * Links: one physical connection to one edge, WebSocket or SSE. A link only moves frames
 * and reports how it ended; the client decides everything else (auth, resume, retry).
 * After `close()` a link calls nothing back.
 */

import type { ClientFrame, ServerFrame } from './protocol.js';
import { SseParser } from './sse.js';

/** The part of the WHATWG `WebSocket` the SDK uses (browsers, and `ws` in Node). */
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
  open(): void;
  frame(frame: ServerFrame, sseId?: string): void;
  end(end: LinkEnd): void;
}

export interface Link {
  readonly kind: 'websocket' | 'sse';
  readonly url: string;
  send(frame: ClientFrame): void;
  close(): void;
}

function decode(data: unknown): string | undefined {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
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

/** Receive-only link: `GET /v1/sse?ch=...` read with `fetch`. */
export class SseLink implements Link {
  readonly kind = 'sse';
  private abort = new AbortController();
  private done = false;

  constructor(
    readonly url: string,
    headers: Record<string, string>,
    fetchImpl: typeof fetch,
    private readonly handlers: LinkHandlers,
  ) {
    void this.run(fetchImpl, headers);
  }

  send(): void {
    // Nothing travels upstream on SSE; the client never calls this in SSE mode.
  }

  close(): void {
    this.done = true;
    this.abort.abort();
  }

  private async run(fetchImpl: typeof fetch, headers: Record<string, string>): Promise<void> {
    let opened = false;
    try {
      const response = await fetchImpl(this.url, {
        headers: { Accept: 'text/event-stream', ...headers },
        signal: this.abort.signal,
        cache: 'no-store',
      });
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
          if (frame && !this.done) this.handlers.frame(frame, message.id);
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
