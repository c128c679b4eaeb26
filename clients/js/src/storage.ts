/**
 * Where the SDK keeps what must survive a page reload (the offline publish queue).
 * Methods may be synchronous or return promises (e.g. IndexedDB, AsyncStorage).
 */
export interface StorageAdapter {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

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

/** The browser's `localStorage` when there is one (and it works), else memory. */
export function defaultStorage(): StorageAdapter {
  try {
    const local = (globalThis as { localStorage?: Storage }).localStorage;
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
