// The citycast volunteers' console: one page, hash routes, talking only to the hub's /api.
// Live state arrives over the /api/ws WebSocket; markers and table rows are updated in place (never rebuilt),
// so the page stays fast with thousands of sites.
//
// This is the entry module: it mounts one module per view (js/views/), routes, signs in and out, and feeds the
// live events into the store (js/store.js), the one module that holds state; views subscribe to what they show.
import { api, createLiveFeed } from './js/api.js';
import { STATES } from './js/format.js';
import { isLanguage, LANGUAGES, preferredLanguage, setLanguage, setTimeZone, t, tOr } from './js/i18n.js';
import { checkRawRule, dailyRule, describeRule, weeklyRule } from './js/rrule.js';
import { can, clearSession, countByState, mergeSite, notify, removeSite, set, state, subscribe, upsertAlert } from './js/store.js';
import { $, $$, act } from './js/ui.js';
import { mountAdmin } from './js/views/admin.js';
import { mountAlerts } from './js/views/alerts.js';
import { mountCap } from './js/views/cap.js';
import { mountMap, tileUrl } from './js/views/map.js';
import { mountOnAir } from './js/views/onair.js';
import { mountPins } from './js/views/pins.js';
import { mountReceipts } from './js/views/receipts.js';
import { mountRecordings } from './js/views/recordings.js';
import { mountSchedule } from './js/views/schedule.js';
import { loadSites, mountSites } from './js/views/sites.js';
import { mountTalkback } from './js/views/talkback.js';
import { loadZones, mountZones } from './js/views/zones.js';

const VIEWS = Object.freeze(['map', 'onair', 'sites', 'schedule', 'alerts', 'recordings', 'receipts', 'pins', 'admin']);

function handleEvent(msg) {
  switch (msg.type) {
    case 'snapshot':
      for (const site of msg.sites || []) mergeSite(site);
      set('addresses', msg.addresses || []);
      for (const a of msg.alerts || []) upsertAlert(a);
      notify('alerts');
      notify('sites-loaded');
      break;
    case 'sites':
      for (const site of msg.sites || []) mergeSite(site);
      break;
    case 'alert':
      if (msg.alert) {
        upsertAlert(msg.alert);
        notify('alerts', msg.alert);
      }
      break;
    case 'addresses':
      set('addresses', msg.addresses || []);
      break;
    default:
      break;
  }
}

function onRoute() {
  const name = location.hash.replace(/^#\/?/, '') || 'map';
  state.route = VIEWS.includes(name) ? name : 'map';
  for (const view of $$('.view')) view.hidden = view.dataset.view !== state.route;
  for (const link of $$('.tabs a')) link.classList.toggle('active', link.dataset.route === state.route);
  notify('route');
}

function showLogin(message) {
  $('#shell').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
  $('#login-form').username.focus();
}

/** The language pickers (sign-in page and top bar): every language by its own name. */
function fillLanguages(select) {
  select.replaceChildren(...Object.entries(LANGUAGES).map(([code, l]) => {
    const option = document.createElement('option');
    option.value = code;
    option.lang = code;
    option.textContent = l.name;
    return option;
  }));
  select.value = state.i18n.lang;
}

/** Leaflet's own words (the zoom buttons' titles) in the user's language, on every map made from now on and on those
 * already shown. */
function localiseLeaflet() {
  if (typeof L === 'undefined') return;
  L.Control.Zoom.prototype.options.zoomInTitle = t('map.zoom_in');
  L.Control.Zoom.prototype.options.zoomOutTitle = t('map.zoom_out');
  for (const a of $$('.leaflet-control-zoom-in')) a.title = t('map.zoom_in');
  for (const a of $$('.leaflet-control-zoom-out')) a.title = t('map.zoom_out');
}

function showWho() {
  const user = state.session.user;
  $('#whoami').textContent = user ? t('top.whoami', { user: user.username, role: tOr(`role.${user.role}`, user.role) }) : '';
}

function main() {
  localiseLeaflet();
  const map = mountMap();
  mountOnAir();
  mountZones();
  mountSites();
  mountSchedule();
  mountAlerts();
  mountCap();
  mountRecordings();
  mountReceipts();
  mountPins();
  mountAdmin();
  mountTalkback();
  const feed = createLiveFeed(handleEvent);

  subscribe('feed', () => {
    const node = $('#conn');
    node.dataset.state = state.feed.status;
    node.textContent = state.feed.text;
  });

  function signedOut(message) {
    clearSession();
    feed.close();
    notify('session');
    $('#golive-link').hidden = true;
    showLogin(message);
  }
  subscribe('expired', signedOut);

  async function signedIn(user) {
    state.session.user = user;
    document.body.classList.toggle('can-operate', can('operator'));
    document.body.classList.toggle('can-admin', can('admin'));
    $('#golive-link').hidden = !can('speaker');
    let lang = isLanguage(user.language) ? user.language : state.i18n.lang;
    if (state.i18n.pickedAtSignIn && state.i18n.lang !== lang) {
      const saved = await api('PUT', 'me/language', { language: state.i18n.lang }).catch(() => null);
      lang = saved ? saved.language : lang;
    }
    state.i18n.pickedAtSignIn = false;
    const where = await api('GET', 'locale').catch(() => null);
    setTimeZone(where ? where.time_zone : null);
    if (lang !== state.i18n.lang) await setLanguage(lang);
    showWho();
    $('#login').hidden = true;
    $('#shell').hidden = false;
    notify('session');
    const [settings] = await Promise.all([
      api('GET', 'settings').catch(() => null),
      loadZones(),
      (async () => {
        set('sources', (await act(() => api('GET', 'sources'))) || []);
      })(),
    ]);
    map.applyTiles(tileUrl(settings));
    await act(loadSites);
    // Whoever opened talkback (another operator, or this one before a reload), the badge shows the hub's truth.
    const listening = await api('GET', 'talkback').catch(() => null);
    state.talkback.site = listening ? listening.site ?? null : null;
    notify('talkback');
    feed.connect();
    onRoute();
  }

  async function login(ev) {
    ev.preventDefault();
    const form = ev.target;
    $('#login-error').textContent = '';
    try {
      const result = await api('POST', 'login', { username: form.username.value.trim(), password: form.password.value });
      state.session.token = result.token; // kept in memory only; the HttpOnly cookie carries the session across reloads
      form.password.value = '';
      await signedIn(result.user);
    } catch (err) {
      $('#login-error').textContent = err.status === 401 ? t('login.wrong') : err.message;
    }
  }

  async function logout() {
    await api('POST', 'logout').catch(() => {});
    for (const name of [...state.sites.keys()]) removeSite(name);
    notify('logout');
    signedOut(t('login.signed_out'));
  }

  // A language picked on the sign-in page becomes the user's (kept on the hub); else the user's own applies.
  fillLanguages($('#login-language'));
  fillLanguages($('#language'));
  $('#login-language').addEventListener('change', async (ev) => {
    state.i18n.pickedAtSignIn = true;
    await setLanguage(ev.target.value);
  });
  $('#language').addEventListener('change', async (ev) => {
    const saved = await act(() => api('PUT', 'me/language', { language: ev.target.value }));
    if (saved) await setLanguage(saved.language);
    else ev.target.value = state.i18n.lang;
  });
  subscribe('language', () => {
    $('#conn').textContent = state.feed.connected ? t('feed.live') : t(`feed.${state.feed.status || 'offline'}`);
    $('#login-language').value = state.i18n.lang;
    $('#language').value = state.i18n.lang;
    showWho();
    localiseLeaflet();
    notify('sources'); // the source pickers name the hub's own sources in the new language
    if (state.session.user) onRoute(); // the shown view draws itself again in the new words
  });

  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);
  window.addEventListener('hashchange', onRoute);
  onRoute();
  api('GET', 'me').then(signedIn, () => showLogin());

  // What the browser tests and the load bench inspect: the page's one global, read-only views of its state.
  window.citycast = Object.freeze({
    markerState: map.markerState,
    markerCount: map.markerCount,
    talkbackSite: () => state.talkback.site,
    counts: () => countByState(STATES),
    site: (name) => (state.sites.has(name) ? { ...state.sites.get(name) } : null),
    status: () => ({
      wsConnected: state.feed.connected,
      lastSnapshotAt: state.feed.lastSnapshotAt,
      lastEventAt: state.feed.lastEventAt,
      signedIn: Boolean(state.session.user),
      route: state.route,
    }),
    rrule: Object.freeze({ weeklyRule, dailyRule, describeRule, checkRawRule }),
    openSite: map.openSite,
    dropLiveFeed: feed.drop,
  });
}

/** A hub started with --insecure says so on every page, the login page too: on a plaintext wire anyone on the
 * path can read the logins and change what the loudspeakers get. */
async function insecureBanner() {
  try {
    const res = await fetch('api/transport');
    if (!res.ok || !(await res.json()).insecure) return;
    const banner = document.createElement('div');
    banner.id = 'insecure-banner';
    banner.setAttribute('role', 'alert');
    banner.dataset.i18n = 'banner.insecure';
    banner.textContent = t('banner.insecure');
    document.body.prepend(banner);
  } catch (e) {
    // The console works without the banner; /metrics still shows citycast_insecure.
  }
}

// The page's words first (the sign-in page's language), then the views that use them.
setLanguage(preferredLanguage())
  .catch((err) => console.error('i18n: no catalogue', err)) // the page still works, with keys for words
  .finally(() => {
    main();
    insecureBanner();
  });
