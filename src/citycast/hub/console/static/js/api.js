// The hub's HTTP API and its live feed (the /api/ws WebSocket). Talks to nothing else.
import { t } from './i18n.js';
import { notify, state } from './store.js';

const WS_BACKOFF_MIN_MS = 500;
const WS_BACKOFF_MAX_MS = 15000;

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function errorText(data, status) {
  const detail = data && typeof data === 'object' ? data.detail : data;
  if (typeof detail === 'string' && detail) return detail;
  if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc: [...], msg}]
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== 'body').join('.')}: ${d.msg}`).join('; ');
  }
  return t('api.http', { status: String(status) });
}

export async function api(method, path, body) {
  // The hub words its refusals in this language (the user's own, once signed in: the hub knows it too).
  const headers = { Accept: 'application/json', 'Accept-Language': state.i18n.lang };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (state.session.token) headers.Authorization = `Bearer ${state.session.token}`;
  let res;
  try {
    res = await fetch(`api/${path}`, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, t('api.unreachable', { error: err.message }));
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (res.status === 401 && path !== 'login' && state.session.user) {
    notify('expired', t('login.expired'));
  }
  if (!res.ok) throw new ApiError(res.status, errorText(data, res.status));
  return data;
}

function setFeed(status, text) {
  state.feed.status = status;
  state.feed.text = text || t(`feed.${status}`);
  notify('feed');
}

/** The live feed: connects while someone is signed in, hands every message to `onMessage`, and reconnects with
 * backoff when the connection drops. */
export function createLiveFeed(onMessage) {
  let socket = null;
  let backoff = WS_BACKOFF_MIN_MS;
  let timer = null;

  function connect() {
    clearTimeout(timer);
    if (!state.session.user) return;
    const url = new URL('api/ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    // The HttpOnly session cookie authenticates the feed: a token in the URL would end up in logs and history.
    setFeed('connecting');
    const ws = new WebSocket(url);
    socket = ws;
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not ours to crash on
      }
      state.feed.lastEventAt = performance.now();
      if (msg.type === 'snapshot') {
        state.feed.connected = true;
        state.feed.lastSnapshotAt = performance.now();
        backoff = WS_BACKOFF_MIN_MS;
        setFeed('live');
      }
      onMessage(msg);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      state.feed.connected = false;
      socket = null;
      if (!state.session.user) {
        setFeed('offline');
        return;
      }
      // Back off, with jitter, so a restarted hub is not hit by every console at the same instant.
      const delay = backoff * (0.75 + Math.random() * 0.5);
      backoff = Math.min(WS_BACKOFF_MAX_MS, backoff * 2);
      setFeed('offline', t('feed.reconnecting', { s: Math.ceil(delay / 1000) }));
      timer = setTimeout(() => {
        // The session may have ended while we were away: ask before reconnecting.
        api('GET', 'me').then(connect, (err) => {
          if (err.status !== 401) connect();
        });
      }, delay);
    };
  }

  function close() {
    if (socket) {
      const old = socket;
      socket = null;
      old.close();
    }
    clearTimeout(timer);
    state.feed.connected = false;
    setFeed('offline');
  }

  // Closes the live feed as a dropped network would; the console must reconnect by itself.
  const drop = () => socket && socket.close(4000, 'dropped on purpose');

  return { connect, close, drop };
}
