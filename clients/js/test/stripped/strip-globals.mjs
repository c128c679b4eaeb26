// Preloaded with `node --import`: leaves what React Native has of the web platform — no
// DOM, no localStorage, no crypto, no atob/btoa, no TextDecoder/TextEncoder, no URL, no
// EventTarget, no global WebSocket — so the SDK proves it needs none of them. `fetch`,
// timers and promises stay.
for (const name of ['document', 'window', 'navigator', 'location', 'localStorage', 'sessionStorage', 'crypto', 'atob', 'btoa', 'TextDecoder', 'TextEncoder', 'URL', 'URLSearchParams', 'EventTarget', 'Event', 'addEventListener', 'WebSocket', 'structuredClone']) {
  try {
    delete globalThis[name];
  } catch {
    // Not deletable here: overwritten below.
  }
  if (name in globalThis) Object.defineProperty(globalThis, name, { value: undefined, configurable: true });
}
