/*
 * switchboard-sw.js: the service worker of @switchboard/client's Web Push
 * (sb.push.enable({serviceWorker: '/switchboard-sw.js'})). Serve this file from your own
 * origin (browsers load service workers only from the page's origin).
 *
 * - `push`: the payload is the notification JSON of docs/protocol.md (`title`, `message`,
 *   `id`, `category`, `priority`, `ref`, ...); it is shown with the title and message,
 *   tagged with the notification's id so a repeated delivery replaces rather than stacks.
 * - `notificationclick`: focuses an open page of this origin, else opens the page named by
 *   the script URL's `open` parameter (`switchboard-sw.js?open=/inbox`, default `/`).
 * - `message` `{type: 'switchboard.notification', notification}` from a page shows a
 *   notification the same way (to try the worker without a push service).
 *
 * To add this to a service worker of your own, `importScripts('/switchboard-sw.js')`.
 */
/* eslint-env serviceworker */
'use strict';

(() => {
  const openPath = new URL(self.location.href).searchParams.get('open') || '/';

  function show(notification) {
    const n = notification && typeof notification === 'object' ? notification : {};
    const options = { body: typeof n.message === 'string' ? n.message : '', data: n };
    if (typeof n.id === 'string' && n.id) options.tag = n.id;
    if (n.priority === 'high' || n.priority === 'urgent') options.requireInteraction = true;
    const title = typeof n.title === 'string' && n.title ? n.title : 'New notification';
    return self.registration.showNotification(title, options);
  }

  self.addEventListener('install', () => self.skipWaiting());
  self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

  self.addEventListener('push', (event) => {
    let notification = {};
    if (event.data) {
      try {
        notification = event.data.json();
      } catch {
        notification = { message: event.data.text() };
      }
    }
    event.waitUntil(show(notification));
  });

  self.addEventListener('message', (event) => {
    const data = event.data;
    if (data && data.type === 'switchboard.notification') event.waitUntil(show(data.notification));
  });

  self.addEventListener('notificationclick', (event) => {
    event.notification.close();
    event.waitUntil(
      self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((windows) => {
        const open = windows.find((w) => new URL(w.url).origin === self.location.origin);
        return open ? open.focus() : self.clients.openWindow(openPath);
      }),
    );
  });
})();
