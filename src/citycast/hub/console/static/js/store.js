// The console's shared state, and the one place that holds mutable state at module level.
// Views read `state` and change it through the functions below (or change a field and call `notify`); whoever
// depends on a part subscribes to its topic. Topics:
//   session       the signed-in user changed (in or out)
//   route         the hash route changed
//   site          one site changed (detail: the site record; only sites with a position)
//   site-removed  a site is gone from the hub (detail: its name)
//   sites-loaded  the whole list was fetched again (fit the map, recount)
//   sites-stale   positions or zone settings may have changed: fetch the list again soon
//   zones         the zone list changed
//   sources       the list of sources an address can play changed
//   addresses     the live addresses changed
//   alerts        alerts were added or cleared (detail: the alert, or nothing for a whole load)
//   talkback      the site the hub listens to, or whether a change is in flight
//   feed          the live feed's connection state
//   expired       the hub refused the session (detail: the message for the sign-in page)
//   language      the user's language (or the time zone) changed: redraw what code wrote (js/i18n.js)

import { t } from './i18n.js';

export const ROLE_RANK = Object.freeze({ viewer: 0, speaker: 1, operator: 2, admin: 3 });
const ALERTS_KEPT = 500;

export const state = {
  session: { user: null, token: null },
  sites: new Map(), // name -> merged site record (DB fields + live fleet fields)
  positionless: new Set(), // names seen live whose position /api/sites was asked for
  zones: [],
  sources: [],
  addresses: [], // the live addresses (on air now)
  alerts: [],
  route: 'map',
  talkback: { site: null, busy: false }, // the site the hub listens to, as this console last set it
  tiles: '', // the tile URL the map was given at sign-in (the page's CSP allows that host only)
  feed: { connected: false, lastSnapshotAt: 0, lastEventAt: 0 },
  // The language's catalogue (English beneath it), the keys found missing (each logged once), the display zone.
  // pickedAtSignIn: the language was chosen on the sign-in page, to be kept as the user's once signed in.
  i18n: { lang: 'en', messages: {}, fallback: {}, missing: new Set(), timeZone: 'Asia/Karachi', pickedAtSignIn: false },
};

const listeners = new Map(); // topic -> Set of callbacks

/** Calls `fn(detail)` on every `notify(topic, detail)`; returns the function that unsubscribes. */
export function subscribe(topic, fn) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(fn);
  return () => listeners.get(topic).delete(fn);
}

/** Synchronous, in subscription order: a view that subscribed is up to date when `notify` returns. */
export function notify(topic, detail) {
  for (const fn of [...(listeners.get(topic) || [])]) fn(detail);
}

export function set(key, value) {
  state[key] = value;
  notify(key);
}

export const can = (role) => Boolean(state.session.user) && ROLE_RANK[state.session.user.role] >= ROLE_RANK[role];

export function zoneName(id) {
  const zone = state.zones.find((z) => z.id === id);
  return zone ? zone.name : id === null || id === undefined ? '' : `#${id}`;
}

export function zonesLabel(ids) {
  return !ids || ids.length === 0 ? t('zones.all') : ids.map(zoneName).join(t('list.sep'));
}

/** Merges a site's fields (from the API or the live feed) into its record. */
export function mergeSite(update) {
  if (!update || typeof update.name !== 'string') return;
  let site = state.sites.get(update.name);
  if (!site) {
    site = { name: update.name };
    state.sites.set(update.name, site);
  }
  Object.assign(site, update);
  if (site.lat === undefined || site.lon === undefined) {
    // A site the page has not seen yet: its position comes from /api/sites (asked once per new name).
    if (!state.positionless.has(site.name)) {
      state.positionless.add(site.name);
      notify('sites-stale');
    }
    return;
  }
  notify('site', site);
}

export function removeSite(name) {
  if (state.sites.delete(name)) notify('site-removed', name);
}

/** Adds or updates an alert, newest first, keeping the last ALERTS_KEPT. Does not notify: a caller adding many
 * notifies once. */
export function upsertAlert(alert) {
  const alerts = state.alerts;
  const i = alerts.findIndex((a) => a.id === alert.id);
  if (i >= 0) alerts[i] = { ...alerts[i], ...alert };
  else alerts.unshift(alert);
  if (alerts.length > 1 && String(alerts[0].raised_at) < String(alerts[1].raised_at)) {
    alerts.sort((a, b) => String(b.raised_at).localeCompare(String(a.raised_at)));
  }
  if (alerts.length > ALERTS_KEPT) alerts.length = ALERTS_KEPT;
}

export function setTalkbackState(change) {
  Object.assign(state.talkback, change);
  notify('talkback');
}

/** Forgets everything of the session (the hub keeps it all). */
export function clearSession() {
  state.session.user = null;
  state.session.token = null;
  state.feed.connected = false;
  // The hub goes on listening until told otherwise; this page forgets it, as it forgets everything of the session.
  state.talkback.site = null;
  notify('talkback');
}

export function countByState(states) {
  const counts = Object.fromEntries(states.map((s) => [s, 0]));
  for (const site of state.sites.values()) counts[states.includes(site.state) ? site.state : 'offline'] += 1;
  return counts;
}
