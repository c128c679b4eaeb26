import type { StorageAdapter } from './types.js';

/** Keeps everything in memory: what survives is the process, not a reload. */
export function memoryStorage(): StorageAdapter {
  const items = new Map<string, string>();
  return {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => {
      items.set(key, value);
    },
    removeItem: (key) => {
      items.delete(key);
    },
  };
}

/**
 * The browser's `localStorage` when there is one (and it works), else memory. React Native
 * has neither: pass an adapter over AsyncStorage as the `storage` option.
 */
export function defaultStorage(): StorageAdapter {
  try {
    const local = (globalThis as { localStorage?: StorageAdapter & { setItem(k: string, v: string): void } }).localStorage;
    if (local) {
      const probe = '__switchboard_probe__';
      local.setItem(probe, '1');
      local.removeItem(probe);
      return local;
    }
  } catch {
    // Private mode or a sandboxed frame: fall through to memory.
  }
  return memoryStorage();
}
