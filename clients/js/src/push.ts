/**
 * Web Push (docs/operations.md §4, Push and email sinks): registers a service worker, asks the user's
 * permission, subscribes through the browser's Push API with the server's VAPID key
 * (`push.vapid`) and registers the subscription for this device (`push.subscribe`).
 * The workers then send notifications to the browser's push service when the user is
 * away; the service worker shows them (the package ships one: `switchboard-sw.js`).
 *
 * Only the browser's own objects are used (`navigator.serviceWorker`, `PushManager`,
 * `Notification`), looked up when called: elsewhere (Node, React Native) `enable` fails
 * with `not_supported`, and mobile apps register FCM/APNs tokens with `push.subscribe`.
 */

import { SwitchboardError } from './errors.js';
import type { PushEnableOptions, PushRegistration, StorageAdapter } from './types.js';
import { base64UrlBytes, randomKey } from './util.js';

/** What push needs from the client. */
export interface PushHost {
  rpc<R>(method: string, params: unknown): Promise<R>;
  storage: StorageAdapter;
  /** Where the generated device id is kept. */
  storageKey: string;
  random: () => number;
  /** The client's `device` option. */
  device: string | undefined;
}

/** What `push.subscribe` accepts as a device id. */
const DEVICE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** How long a new service worker may take to become active. */
const ACTIVATION_TIMEOUT_MS = 30_000;

// The parts of the browser's types used here, so the SDK compiles and runs without them.
interface PushSubscriptionLike {
  endpoint: string;
  options?: { applicationServerKey?: ArrayBuffer | null };
  toJSON(): unknown;
  unsubscribe(): Promise<boolean>;
}
interface WorkerLike {
  state: string;
  addEventListener(type: 'statechange', listener: () => void): void;
  removeEventListener(type: 'statechange', listener: () => void): void;
}
interface RegistrationLike {
  scope: string;
  active: WorkerLike | null;
  installing: WorkerLike | null;
  waiting: WorkerLike | null;
  pushManager: {
    getSubscription(): Promise<PushSubscriptionLike | null>;
    subscribe(options: { userVisibleOnly: boolean; applicationServerKey: Uint8Array }): Promise<PushSubscriptionLike>;
  };
}
interface ServiceWorkerContainerLike {
  register(url: string, options?: { scope?: string }): Promise<RegistrationLike>;
  getRegistration(scope?: string): Promise<RegistrationLike | undefined>;
}
interface NotificationLike {
  permission: string;
  requestPermission(): Promise<string>;
}

export class Push {
  private registration: RegistrationLike | undefined;

  constructor(private readonly host: PushHost) {}

  /** Whether this environment has service workers and the Push API. */
  get supported(): boolean {
    return serviceWorkers() !== undefined && typeof (globalThis as { PushManager?: unknown }).PushManager === 'function';
  }

  /**
   * Registers the service worker, asks for permission (call it from a click: browsers
   * ignore permission prompts nobody asked for), subscribes with the server's VAPID key
   * and registers the subscription for this device. Enabling again reuses the browser's
   * subscription when it was made with the same key.
   */
  async enable(options: PushEnableOptions): Promise<PushRegistration> {
    if (typeof options !== 'object' || options === null || typeof options.serviceWorker !== 'string' || options.serviceWorker.length === 0) {
      throw new TypeError('push.enable needs {serviceWorker: "<url of the service worker script>"}');
    }
    if (options.device !== undefined && (typeof options.device !== 'string' || !DEVICE_ID.test(options.device))) {
      throw new TypeError('push.enable: device must be 1 to 128 of A-Z, a-z, 0-9, ".", "_", ":", "-"');
    }
    const container = serviceWorkers();
    if (!container || !this.supported) throw new SwitchboardError('not_supported', 'this environment has no service workers or Push API');
    const registration = await container.register(options.serviceWorker, options.scope === undefined ? undefined : { scope: options.scope });
    this.registration = registration;
    await activated(registration);
    await permission();
    const { publicKey } = await this.host.rpc<{ publicKey: string }>('push.vapid', {});
    const key = typeof publicKey === 'string' ? base64UrlBytes(publicKey) : undefined;
    if (!key || key.length !== 65) throw new SwitchboardError('internal', 'push.vapid answered no P-256 public key');
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameKey(subscription.options?.applicationServerKey, key)) {
      // Made with another server's key (or an older one): the push service would refuse our pushes.
      await subscription.unsubscribe();
      subscription = null;
    }
    subscription ??= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    const device = options.device ?? (await this.deviceId());
    await this.host.rpc('push.subscribe', { subscription: subscription.toJSON(), device });
    return { device, endpoint: subscription.endpoint };
  }

  /**
   * Unregisters this browser's subscription from the server and from the push service.
   * Resolves with whether there was one. `serviceWorker` (or `scope`) finds the
   * registration when `enable` was called on an earlier page load.
   */
  async disable(options: { serviceWorker?: string; scope?: string } = {}): Promise<boolean> {
    const container = serviceWorkers();
    if (!container) return false;
    const registration = this.registration ?? (await container.getRegistration(options.scope ?? options.serviceWorker));
    const subscription = await registration?.pushManager.getSubscription();
    if (!subscription) return false;
    await this.host.rpc('push.unsubscribe', { endpoint: subscription.endpoint });
    await subscription.unsubscribe();
    return true;
  }

  /** The client's `device` when `push.subscribe` takes it, else a random id kept in storage. */
  private async deviceId(): Promise<string> {
    if (this.host.device !== undefined && DEVICE_ID.test(this.host.device)) return this.host.device;
    const key = `${this.host.storageKey}:push-device`;
    const stored = await this.host.storage.getItem(key);
    if (stored && DEVICE_ID.test(stored)) return stored;
    const made = `web-${randomKey(this.host.random).slice(2)}`;
    await this.host.storage.setItem(key, made);
    return made;
  }
}

function serviceWorkers(): ServiceWorkerContainerLike | undefined {
  const nav = (globalThis as { navigator?: { serviceWorker?: ServiceWorkerContainerLike } }).navigator;
  return nav?.serviceWorker && typeof nav.serviceWorker.register === 'function' ? nav.serviceWorker : undefined;
}

/**
 * Resolves once the registration has an active worker (the Push API needs one). Not
 * `navigator.serviceWorker.ready`: that waits for a worker controlling this page, which a
 * worker whose scope does not cover the page never becomes.
 */
function activated(registration: RegistrationLike): Promise<void> {
  if (registration.active) return Promise.resolve();
  const pending = registration.installing ?? registration.waiting;
  if (!pending) return Promise.reject(new SwitchboardError('unavailable', 'the service worker did not install'));
  const worker: WorkerLike = pending;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.removeEventListener('statechange', check);
      reject(new SwitchboardError('timeout', 'the service worker did not become active'));
    }, ACTIVATION_TIMEOUT_MS);
    function check(): void {
      if (worker.state !== 'activated' && worker.state !== 'redundant') return;
      clearTimeout(timer);
      worker.removeEventListener('statechange', check);
      if (worker.state === 'activated') resolve();
      else reject(new SwitchboardError('unavailable', 'the service worker failed to install'));
    }
    worker.addEventListener('statechange', check);
    check();
  });
}

/** Asks for permission to show notifications (push without them is not allowed). */
async function permission(): Promise<void> {
  const notification = (globalThis as { Notification?: NotificationLike }).Notification;
  if (!notification) return; // the Push API then asks by itself
  const answer = notification.permission === 'granted' ? 'granted' : await notification.requestPermission();
  if (answer !== 'granted') throw new SwitchboardError('forbidden', `notifications are not allowed (${answer})`);
}

function sameKey(a: ArrayBuffer | null | undefined, b: Uint8Array): boolean {
  if (!a) return false;
  const bytes = new Uint8Array(a);
  return bytes.length === b.length && bytes.every((byte, i) => byte === b[i]);
}
