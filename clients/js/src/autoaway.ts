/**
 * Automatic away (docs/protocol.md, Presence): with the app in the background (the page
 * hidden, or `setAppState('background')` from React Native's AppState) and no input for
 * `idleAfterMs`, the device shows `away`; input or coming back to the front shows
 * `online` again. In a browser it follows `visibilitychange` and input events by itself;
 * elsewhere the app reports its state, so nothing here needs the DOM.
 */

import type { AppState } from './types.js';

export interface AutoAwayHost {
  idle(idle: boolean): void;
}

interface EventTargetLike {
  addEventListener(type: string, listener: () => void, options?: { passive?: boolean; capture?: boolean }): void;
  removeEventListener(type: string, listener: () => void, options?: { capture?: boolean }): void;
}

const INPUT_EVENTS = ['pointerdown', 'keydown', 'touchstart', 'wheel', 'mousemove'];

export class AutoAway {
  private background = false;
  private idle = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private detach: (() => void) | undefined;

  constructor(
    private readonly idleAfterMs: number,
    private readonly host: AutoAwayHost,
  ) {
    if (!Number.isFinite(idleAfterMs) || idleAfterMs < 0) {
      throw new TypeError(`idleAfterMs must be a number of milliseconds (0 turns automatic away off), not ${String(idleAfterMs)}`);
    }
  }

  get appState(): AppState {
    return this.background ? 'background' : 'active';
  }

  setAppState(state: AppState): void {
    if (state !== 'background' && state !== 'active') {
      throw new TypeError(`setAppState takes "background" or "active", not ${JSON.stringify(state)}`);
    }
    if (state === 'background') {
      if (this.background) return;
      this.background = true;
      this.arm();
    } else {
      this.background = false;
      this.activity();
    }
  }

  /** Input from the user: not idle, and the countdown starts again. */
  activity(): void {
    if (this.idle) {
      this.idle = false;
      this.host.idle(false);
    }
    if (this.background) this.arm();
    else this.disarm();
  }

  /** Follows the page's visibility and input, where there is a `document`. */
  attachToPage(): void {
    const doc = (globalThis as { document?: EventTargetLike & { visibilityState?: string } }).document;
    if (!doc || typeof doc.addEventListener !== 'function' || this.detach) return;
    const visibility = (): void => this.setAppState(doc.visibilityState === 'hidden' ? 'background' : 'active');
    let lastInput = 0;
    const input = (): void => {
      // mousemove fires often; a second's resolution is plenty for minutes of idleness.
      const now = Date.now();
      if (now - lastInput < 1000) return;
      lastInput = now;
      this.activity();
    };
    doc.addEventListener('visibilitychange', visibility);
    for (const type of INPUT_EVENTS) doc.addEventListener(type, input, { passive: true, capture: true });
    this.detach = () => {
      doc.removeEventListener('visibilitychange', visibility);
      for (const type of INPUT_EVENTS) doc.removeEventListener(type, input, { capture: true });
    };
    if (doc.visibilityState === 'hidden') this.setAppState('background');
  }

  dispose(): void {
    this.disarm();
    this.detach?.();
    this.detach = undefined;
  }

  private arm(): void {
    this.disarm();
    if (this.idleAfterMs === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.background || this.idle) return;
      this.idle = true;
      this.host.idle(true);
    }, Math.min(this.idleAfterMs, 2 ** 31 - 1));
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
