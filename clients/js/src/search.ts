/**
 * Message search (docs/protocol.md §10.12, Search): the `messages.search` RPC over the
 * conversations the user takes part in now, newest first. Any text is a query; the
 * server reads it as words, never as syntax.
 */

import type { SearchOptions, SearchPage } from './types.js';

export type Rpc = <R>(method: string, params: unknown) => Promise<R>;

/** Checks the arguments and asks the server for one page of results. */
export function search<D>(rpc: Rpc, q: string, options: SearchOptions = {}): Promise<SearchPage<D>> {
  if (typeof q !== 'string' || q.trim().length === 0) throw new TypeError('search needs some text to look for');
  if (typeof options !== 'object' || options === null) throw new TypeError('search: options must be an object ({ch, limit, before})');
  const params: Record<string, unknown> = { q };
  if (options.ch !== undefined) {
    if (typeof options.ch !== 'string' || !/^[^:]+:./.test(options.ch)) throw new TypeError('search: ch must be a channel such as "conversation:c1"');
    params.ch = options.ch;
  }
  if (options.limit !== undefined) {
    if (!Number.isInteger(options.limit) || options.limit < 1) throw new TypeError(`search: limit must be a positive integer, not ${String(options.limit)}`);
    params.limit = options.limit;
  }
  if (options.before !== undefined) {
    if (typeof options.before !== 'string' || options.before.length === 0) throw new TypeError('search: before must be the next cursor of the previous page');
    params.before = options.before;
  }
  return rpc<SearchPage<D>>('messages.search', params);
}
