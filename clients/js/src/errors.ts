import type { ErrorCode } from './types.js';

/**
 * An error of the SDK: a server `err` frame (`code` is one of the protocol's codes), or
 * one of the SDK's own: `disconnected` (the connection dropped while waiting),
 * `timeout` (no answer in time), `closed` (the client was closed), `not_supported`
 * (the SSE fallback cannot do this).
 */
export class SwitchboardError extends Error {
  override readonly name = 'SwitchboardError';
  constructor(
    readonly code: ErrorCode | 'disconnected' | 'timeout' | 'closed' | 'not_supported',
    message: string,
  ) {
    super(message);
  }

  /** Whether trying the same thing again later may succeed. */
  get retryable(): boolean {
    return (
      this.code === 'disconnected' ||
      this.code === 'timeout' ||
      this.code === 'unavailable' ||
      this.code === 'rate_limited' ||
      this.code === 'not_supported'
    );
  }
}
