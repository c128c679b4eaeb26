// The Switchboard demo: one conversation between two users (messages, typing, ticks,
// presence), the user's conversations with unread badges (sb.inbox) and a message search
// (sb.search), a live project feed, a notification bell, notifications shown through the
// browser's service worker (sb.push) and a connection badge. Plain DOM on top of the SDK,
// which the edge serves from /web/sdk/ in development mode.
//
// The page reads its settings from the URL fragment (or query):
//   token=<jwt>          the user's token (else the picker asks for one)
//   edges=<ws url>,...   edges to use, tried in turn (default: this page's edge)
//   conversation=<id>    default c1        project=<id>   default p1
//   peer=<user id>       the other participant (default: the other demo user)
//   peerName=<name>      how to show the other participant (the token's `name` claim names me)
import { Switchboard, tokenClaims } from '/web/sdk/index.js';

const DEMO_USERS = [
  { id: 'u1', name: 'Hana', role: 'homeowner' },
  { id: 'u2', name: 'Carlos', role: 'contractor' },
];

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('data-') || key === 'title' || key === 'type' || key === 'aria-label') node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};

const settings = (() => {
  const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  const defaultEdge = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
  return {
    token: params.get('token') || sessionStorage.getItem('switchboard-demo-token') || '',
    edges: (params.get('edges') || defaultEdge).split(',').map((s) => s.trim()).filter(Boolean),
    conversation: params.get('conversation') || 'c1',
    project: params.get('project') || 'p1',
    peer: params.get('peer') || '',
    peerName: params.get('peerName') || '',
  };
})();

/** Display names: the demo users', the token's `name` claim, the `peerName` parameter. */
const names = new Map(DEMO_USERS.map((u) => [u.id, u.name]));
const displayName = (id) => names.get(id) ?? id;
const initials = (name) => name.slice(0, 1).toUpperCase();
const time = (iso) => {
  const date = iso ? new Date(iso) : new Date();
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
};

// --- picking a user ------------------------------------------------------------------------

function showPicker(error) {
  const picker = $('[data-testid="picker"]');
  picker.hidden = false;
  const users = $('.users', picker);
  users.replaceChildren(
    ...DEMO_USERS.map((u) =>
      el('div', { class: 'user-card' },
        el('span', { class: 'avatar big' }, initials(u.name)),
        el('div', {}, el('strong', {}, `${u.name}`), el('div', { class: 'muted small' }, `${u.id} · ${u.role}`)),
        el('code', { class: 'small' }, `switchboard token --sub ${u.id} --ttl 1h`),
      ),
    ),
  );
  if (error) {
    const p = $('[data-testid="picker-error"]');
    p.textContent = error;
    p.hidden = false;
  }
  $('[data-testid="paste-form"]').onsubmit = (event) => {
    event.preventDefault();
    const token = $('#token-input').value.trim();
    if (!tokenClaims(token)?.sub) {
      showPicker('That does not look like a JWT.');
      return;
    }
    sessionStorage.setItem('switchboard-demo-token', token);
    location.hash = '';
    location.reload();
  };
}

// --- the app -------------------------------------------------------------------------------

function start(token) {
  const claims = tokenClaims(token);
  const me = claims.sub;
  const peer = settings.peer || DEMO_USERS.find((u) => u.id !== me)?.id || 'u2';
  if (claims.name) names.set(me, claims.name);
  if (settings.peerName) names.set(peer, settings.peerName);
  const conversation = `conversation:${settings.conversation}`;
  const project = `project:${settings.project}`;
  sessionStorage.setItem('switchboard-demo-token', token);

  $('[data-testid="app"]').hidden = false;
  $('[data-testid="me"]').hidden = false;
  $('[data-testid="bell"]').hidden = false;
  $('.me .name').textContent = displayName(me);
  $('.me .name').title = me;
  $('.me .avatar').textContent = initials(displayName(me));
  $('.chat .channel').textContent = settings.conversation;
  $('.feed .channel').textContent = settings.project;
  $('.peer-name').textContent = displayName(peer);

  const sb = new Switchboard({
    url: settings.edges,
    // The demo has no login server: the token it was given is all it has. When that one
    // expires the badge says so and the picker asks for a new one.
    token: () => token,
    storageKey: `switchboard-demo:${me}`,
    device: 'demo-web',
  });
  window.switchboard = sb; // for the browser tests and the curious

  mountBadge(sb);
  mountChat(sb, { me, peer, ch: conversation });
  mountFeed(sb, project);
  const push = mountPush(sb);
  mountBell(sb, push);
  mountStatus(sb);
  mountInbox(sb, conversation);
  mountSearch(sb);

  sb.connect().catch((error) => {
    if (sb.state === 'disconnected') {
      sessionStorage.removeItem('switchboard-demo-token');
      console.warn('switchboard: not connected', error);
    }
  });
}

function mountBadge(sb) {
  const badge = $('[data-testid="conn-badge"]');
  const text = $('.badge-text', badge);
  const render = (change) => {
    badge.dataset.state = sb.state;
    const edge = change?.url ? new URL(change.url).host : badge.dataset.edge;
    if (edge) badge.dataset.edge = edge;
    if (change?.transport) badge.dataset.transport = change.transport;
    switch (sb.state) {
      case 'connected':
        text.textContent = sb.latency === undefined ? 'Connected' : `Connected · ${sb.latency} ms`;
        break;
      case 'connecting':
        text.textContent = 'Connecting…';
        break;
      case 'reconnecting':
        text.textContent = `Reconnecting${change?.attempt > 1 ? ` (attempt ${change.attempt})` : ''}…`;
        break;
      case 'disconnected':
        text.textContent = change?.reason === 'bye:unauthorized' || change?.reason === 'token_expired' ? 'Token refused — pick a user again' : 'Disconnected';
        break;
      default:
        text.textContent = 'Not connected';
    }
    badge.title = `${sb.state}${change?.reason ? ` (${change.reason})` : ''}${edge ? ` via ${edge}` : ''}${sb.transport ? ` over ${sb.transport}` : ''}`;
  };
  let last;
  sb.on('state', (change) => {
    last = change;
    render(change);
    if (change.state === 'disconnected' && (change.reason === 'bye:unauthorized' || change.reason === 'token_expired')) {
      sessionStorage.removeItem('switchboard-demo-token');
      showPicker('The server refused the token (expired or invalid). Paste a new one.');
    }
  });
  sb.on('latency', () => render(last));
  render();
}

function mountStatus(sb) {
  const select = $('[data-testid="my-status"]');
  const apply = () => sb.presence.setStatus(select.value).catch((error) => {
    select.title = `Presence not available: ${error.message}`;
  });
  select.onchange = apply;
  sb.once('welcome', apply);
}

// --- chat ----------------------------------------------------------------------------------

function mountChat(sb, { me, peer, ch }) {
  const list = $('[data-testid="messages"]');
  const typingLine = $('[data-testid="typing"]');
  const input = $('[data-testid="composer"]');
  const dot = $('[data-testid="presence-dot"]');
  /** Stored messages by event id, and messages still on their way by key. */
  const byEventId = new Map();
  const pendingByKey = new Map();
  let highestFromPeer = 0;

  const statusOf = (entry) => {
    if (entry.outgoing) return entry.outgoing.status;
    if (!entry.mine) return undefined;
    let status = 'sent';
    for (const [user, cursors] of sb.receipts(ch)) {
      if (user === me) continue;
      if (cursors.read >= entry.seq) return 'read';
      if (cursors.delivered >= entry.seq) status = 'delivered';
    }
    return status;
  };

  const TICKS = { sending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
  const TICK_TITLES = { sending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Not sent — click to retry' };

  const render = (entry) => {
    const status = statusOf(entry);
    const ticks = entry.mine
      ? el('span', { class: `ticks ${status}`, 'data-testid': 'ticks', 'data-status': status, title: TICK_TITLES[status] }, TICKS[status])
      : null;
    if (ticks && status === 'failed') ticks.onclick = () => entry.outgoing?.retry();
    const node = el('li',
      {
        class: `msg ${entry.mine ? 'mine' : 'theirs'}`,
        'data-testid': 'message',
        'data-event-id': entry.eventId,
        'data-key': entry.key,
        'data-seq': entry.seq,
        'data-status': status,
      },
      entry.mine ? null : el('span', { class: 'from' }, displayName(entry.from)),
      el('p', { class: 'text' }, entry.text),
      el('span', { class: 'meta' }, time(entry.timestamp), ticks),
    );
    if (entry.node) entry.node.replaceWith(node);
    entry.node = node;
    return node;
  };

  /** Keeps the list in seq order; pending messages stay at the bottom. */
  const place = (entry) => {
    const node = render(entry);
    if (entry.seq === undefined) {
      list.append(node);
    } else {
      const after = [...list.children].find((li) => li.dataset.seq === undefined || Number(li.dataset.seq) > entry.seq);
      list.insertBefore(node, after ?? null);
    }
    list.scrollTop = list.scrollHeight;
  };

  const markRead = () => {
    if (highestFromPeer > 0 && document.visibilityState === 'visible') sb.read(ch, highestFromPeer);
  };
  document.addEventListener('visibilitychange', markRead);

  const onStored = ({ seq, event }) => {
    if (event.type !== 'message.new') return;
    if (byEventId.has(event.id)) return;
    const mine = event.actor?.id === me;
    const outgoing = mine ? [...pendingByKey.values()].find((m) => m.eventId === event.id) : undefined;
    const entry = {
      eventId: event.id,
      seq,
      from: event.actor?.id ?? '?',
      text: String(event.data?.text ?? ''),
      timestamp: event.timestamp,
      mine,
      outgoing,
    };
    if (outgoing) {
      pendingByKey.get(outgoing.key)?.entry?.node?.remove();
      entry.key = outgoing.key;
    }
    byEventId.set(event.id, entry);
    place(entry);
    if (!mine) {
      highestFromPeer = Math.max(highestFromPeer, seq);
      markRead();
    }
  };

  const refill = async () => {
    // After a gap the events in between are lost to the stream: read them from history.
    const page = await sb.history(ch, { limit: 100 }).catch(() => ({ events: [] }));
    for (const e of page.events) onStored(e);
  };

  sb.subscribe(ch, { types: ['message.*'], since: { last: 100 }, onGap: refill, onError: (e) => showChatError(e) }, onStored);

  const track = (message) => {
    if (message.ch !== ch) return;
    pendingByKey.set(message.key, message);
    const entry = {
      key: message.key,
      text: String(message.data?.text ?? ''),
      timestamp: message.createdAt,
      mine: true,
      outgoing: message,
    };
    message.entry = entry;
    place(entry);
    message.on('status', () => {
      if (message.eventId && byEventId.has(message.eventId)) {
        // The stored copy arrived before the acknowledgement: it is the one that stays.
        const stored = byEventId.get(message.eventId);
        if (entry.node && stored !== entry) entry.node.remove();
        stored.outgoing = message;
        stored.key = message.key;
        render(stored);
      } else if (message.eventId) {
        entry.eventId = message.eventId;
        entry.seq = message.seq;
        byEventId.set(message.eventId, entry);
        entry.node?.remove();
        place(entry);
      } else {
        render(entry);
      }
    });
  };
  sb.on('message', track);
  sb.pendingMessages().then((messages) => messages.forEach((m) => m.restored && !pendingByKey.has(m.key) && track(m)));

  sb.on('receipt', (receipt) => {
    if (receipt.ch !== ch) return;
    for (const entry of byEventId.values()) if (entry.mine) render(entry);
  });

  // Typing: ours is throttled by the SDK, theirs expires by itself.
  const typing = sb.typing(ch);
  input.addEventListener('input', () => (input.value ? typing.keystroke() : typing.stop()));
  typing.onChange((users) => {
    typingLine.textContent = users.length === 0 ? '' : `${users.map(displayName).join(', ')} ${users.length === 1 ? 'is' : 'are'} typing…`;
    typingLine.dataset.users = users.join(',');
  });

  $('[data-testid="composer-form"]').onsubmit = (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    typing.stop();
    sb.publish(ch, 'message.new', { text, replyTo: null });
  };

  // Presence dot of the other participant.
  const setDot = (status, title) => {
    dot.dataset.status = status;
    dot.title = title;
  };
  sb.presence.watch(
    peer,
    (info) => setDot(info.status, `${displayName(peer)} is ${info.status}${info.text ? ` — ${info.text}` : ''}`),
    { onError: (error) => setDot('unknown', `Presence not available: ${error.message}`) },
  );

  function showChatError(error) {
    list.append(el('li', { class: 'system', 'data-testid': 'chat-error' }, `Cannot open ${ch}: ${error.message}`));
  }
}

// --- project feed --------------------------------------------------------------------------

function describe(event) {
  const d = event.data ?? {};
  const money = (n) => (typeof n === 'number' ? n.toLocaleString(undefined, { style: 'currency', currency: 'USD', maximumFractionDigits: 0 }) : undefined);
  switch (event.type) {
    case 'bid.new':
      return { title: `New bid ${money(d.amount) ?? ''}`.trim(), body: [d.bidId, d.contractor ?? event.actor?.id].filter(Boolean).join(' · ') };
    case 'bid.update':
      return { title: `Bid ${d.status ?? 'updated'}`, body: [d.bidId, money(d.amount)].filter(Boolean).join(' · ') };
    case 'project.update':
      return { title: d.title ?? `Project ${d.status ?? 'updated'}`, body: d.message ?? d.status ?? '' };
    default:
      return { title: event.type, body: JSON.stringify(d).slice(0, 120) };
  }
}

function mountFeed(sb, ch) {
  const list = $('[data-testid="feed"]');
  const empty = $('[data-testid="feed-empty"]');
  sb.subscribe(ch, { types: ['bid.*', 'project.*'], since: { last: 20 } }, ({ seq, event }) => {
    const { title, body } = describe(event);
    const item = el('li', { class: `feed-item ${event.type.replace('.', '-')}`, 'data-testid': 'feed-item', 'data-type': event.type, 'data-seq': seq },
      el('span', { class: 'kind' }, event.type),
      el('strong', { class: 'title' }, title),
      el('span', { class: 'body muted' }, body),
      el('time', { class: 'muted small' }, time(event.timestamp)),
    );
    list.prepend(item);
    empty.hidden = true;
  });
}

// --- notifications -------------------------------------------------------------------------

function mountBell(sb, push) {
  const bell = $('[data-testid="bell"]');
  const count = $('[data-testid="bell-count"]');
  const panel = $('[data-testid="notifications-panel"]');
  const list = $('[data-testid="notification-list"]');
  const notice = $('[data-testid="notifications-notice"]');
  const live = [];

  sb.notifications.onUnread((unread) => {
    count.textContent = unread > 99 ? '99+' : String(unread);
    count.dataset.count = String(unread);
    count.hidden = unread === 0;
    bell.setAttribute('aria-label', `Notifications, ${unread} unread`);
  });
  sb.notifications.onNotification((n) => {
    push.show(n);
    live.unshift(n);
    if (!panel.hidden) renderItems(live);
  });

  const renderItems = (items) => {
    list.replaceChildren(
      ...items.map((n) =>
        el('li', { class: `notification ${n.read ? 'read' : 'unread'} ${n.priority ?? ''}`, 'data-testid': 'notification' },
          el('strong', {}, n.title ?? n.category ?? 'Notification'),
          el('span', { class: 'muted' }, n.message ?? ''),
          el('time', { class: 'muted small' }, time(n.createdAt)),
        ),
      ),
    );
    if (items.length === 0) list.append(el('li', { class: 'muted' }, 'No notifications.'));
  };

  bell.onclick = async () => {
    panel.hidden = !panel.hidden;
    bell.setAttribute('aria-expanded', String(!panel.hidden));
    if (panel.hidden) return;
    try {
      const page = await sb.notifications.list({ limit: 20 });
      notice.hidden = true;
      renderItems(page.items);
    } catch (error) {
      notice.textContent = `The notification service did not answer (${error.code}); showing what arrived live.`;
      notice.hidden = false;
      renderItems(live);
    }
  };
  $('[data-testid="mark-all-read"]').onclick = async () => {
    try {
      await sb.notifications.markRead('all');
      const page = await sb.notifications.list({ limit: 20 });
      renderItems(page.items);
    } catch (error) {
      notice.textContent = `Could not mark read: ${error.message}`;
      notice.hidden = false;
    }
  };
}

// --- conversations and search --------------------------------------------------------------

/** Opens another conversation: the page loads again with it (the token stays in this tab). */
function openConversation(ch) {
  const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  params.delete('token');
  params.set('conversation', ch.slice(ch.indexOf(':') + 1));
  location.hash = params.toString();
  location.reload();
}

const conversationLabel = (ch) => ch.slice(ch.indexOf(':') + 1);

function mountInbox(sb, current) {
  const list = $('[data-testid="inbox-list"]');
  const total = $('[data-testid="inbox-total"]');
  const notice = $('[data-testid="inbox-notice"]');

  const item = (entry) => {
    const last = entry.last;
    const preview = last ? `${last.actor?.id ? `${displayName(last.actor.id)}: ` : ''}${last.text ?? ''}` : 'No messages yet';
    const unread = entry.unread > 0 ? el('span', { class: 'unread', 'data-testid': 'inbox-unread', title: `${entry.unread} unread` }, entry.unread > 99 ? '99+' : String(entry.unread)) : null;
    const mute = el('button', { type: 'button', class: 'mute', 'data-testid': 'inbox-mute', title: entry.muted ? 'Unmute' : 'Mute' }, entry.muted ? 'unmute' : 'mute');
    mute.onclick = (event) => {
      event.stopPropagation();
      sb.inbox.mute(entry.ch, !entry.muted).catch((error) => showNotice(`Could not ${entry.muted ? 'unmute' : 'mute'}: ${error.message}`));
    };
    const node = el('li',
      {
        class: `conv${entry.ch === current ? ' current' : ''}${entry.muted ? ' muted' : ''}`,
        'data-testid': 'inbox-item',
        'data-ch': entry.ch,
        'data-unread': String(entry.unread),
        'data-muted': String(entry.muted),
        title: entry.ch,
      },
      el('span', { class: 'title' }, conversationLabel(entry.ch)),
      unread ?? el('span', {}),
      el('span', { class: 'preview' }, preview),
      mute,
    );
    node.onclick = () => entry.ch !== current && openConversation(entry.ch);
    return node;
  };

  const showNotice = (text) => {
    notice.textContent = text;
    notice.hidden = false;
  };

  sb.inbox.on('error', (error) => showNotice(`The inbox is not available (${error.code ?? 'error'}): ${error.message}`));
  sb.inbox.watch((state) => {
    if (!state.ready) return;
    notice.hidden = true;
    list.replaceChildren(...state.conversations.map(item));
    if (state.conversations.length === 0) list.append(el('li', { class: 'muted small' }, 'No conversations yet.'));
    total.textContent = state.total > 99 ? '99+' : String(state.total);
    total.dataset.count = String(state.total);
    total.hidden = state.total === 0;
    if (state.hasMore) {
      const more = el('li', {}, el('button', { type: 'button', class: 'link', 'data-testid': 'inbox-more' }, 'Older conversations'));
      more.onclick = () => sb.inbox.loadMore().catch((error) => showNotice(error.message));
      list.append(more);
    }
  });
}

/** A search snippet (plain text, matched words as `**word**`) with the matches as <mark>. */
function highlighted(snippet) {
  const parts = String(snippet).split('**');
  return parts.map((part, i) => (i % 2 === 1 ? el('mark', {}, part) : document.createTextNode(part)));
}

function mountSearch(sb) {
  const form = $('[data-testid="search-form"]');
  const input = $('[data-testid="search-input"]');
  const results = $('[data-testid="search-results"]');
  let asked = 0;

  const run = async () => {
    const q = input.value.trim();
    const mine = ++asked;
    if (!q) {
      results.hidden = true;
      results.replaceChildren();
      return;
    }
    results.hidden = false;
    results.dataset.state = 'searching';
    try {
      const page = await sb.search(q, { limit: 20 });
      if (mine !== asked) return;
      results.replaceChildren(
        ...page.results.map((hit) => {
          const text = hit.snippet || String(hit.event?.data?.text ?? '');
          const node = el('li', { class: 'hit', 'data-testid': 'search-result', 'data-ch': hit.ch, 'data-seq': hit.seq },
            el('span', { class: 'where' }, `${conversationLabel(hit.ch)} · ${displayName(hit.event?.actor?.id ?? '?')} · ${time(hit.event?.timestamp)}`),
            ...highlighted(text),
          );
          node.onclick = () => openConversation(hit.ch);
          return node;
        }),
      );
      if (page.results.length === 0) results.append(el('li', { class: 'muted small', 'data-testid': 'search-empty' }, `Nothing found for “${q}”.`));
      results.dataset.state = 'done';
    } catch (error) {
      if (mine !== asked) return;
      results.replaceChildren(el('li', { class: 'muted small', 'data-testid': 'search-error' }, `Search is not available (${error.code ?? 'error'}): ${error.message}`));
      results.dataset.state = 'error';
    }
  };
  form.onsubmit = (event) => {
    event.preventDefault();
    run();
  };
  input.addEventListener('search', run); // the clear button of type=search
}

// --- push ----------------------------------------------------------------------------------

/** The package's service worker, as the edge serves the built SDK. */
const SERVICE_WORKER = '/web/sdk/switchboard-sw.js?open=/';

/**
 * The service worker is registered at once (it needs no permission). "Enable push" asks for
 * permission and runs sb.push.enable: from then on live notifications are also shown by
 * the service worker, and the workers push to this browser while the user is away. A
 * browser without a push service (a headless one) still shows them while the page is open.
 */
function mountPush(sb) {
  const button = $('[data-testid="push-enable"]');
  const container = navigator.serviceWorker;
  const registration = container ? container.register(SERVICE_WORKER).catch((error) => {
    button.dataset.state = 'error';
    button.title = `The service worker did not register: ${error.message}`;
    return undefined;
  }) : Promise.resolve(undefined);
  let showing = false;
  if (container) button.hidden = false;

  const set = (state, title, error) => {
    button.dataset.state = state;
    button.title = title;
    if (error) button.dataset.error = error;
    else delete button.dataset.error;
    button.textContent = state === 'enabled' ? 'Push on' : state === 'shown' ? 'Notifications on' : 'Enable push';
  };

  button.onclick = async () => {
    button.disabled = true;
    try {
      const device = await sb.push.enable({ serviceWorker: SERVICE_WORKER });
      showing = true;
      set('enabled', `Web Push is on for this browser (device ${device.device})`);
    } catch (error) {
      showing = typeof Notification === 'function' && Notification.permission === 'granted';
      const why = `${error.code ?? error.name}: ${error.message}`;
      if (showing) set('shown', `Notifications show while this page is open; Web Push is off (${why})`, why);
      else set('error', `Notifications are off (${why})`, why);
    } finally {
      button.disabled = false;
    }
  };

  return {
    /** Shows a notification through the service worker, as a push would. */
    async show(notification) {
      if (!showing) return;
      const reg = await registration;
      (reg?.active ?? reg?.waiting ?? reg?.installing)?.postMessage({ type: 'switchboard.notification', notification });
    },
  };
}

// --- go ------------------------------------------------------------------------------------

if (settings.token && tokenClaims(settings.token)?.sub) start(settings.token);
else showPicker();
window.__demoStarted = true;
