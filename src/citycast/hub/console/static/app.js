// The citycast volunteers' console: one page, hash routes, talking only to the hub's /api.
// Live state arrives over the /api/ws WebSocket; markers and table rows are updated in place (never rebuilt),
// so the page stays fast with thousands of sites.
import { WEEKDAYS, checkRawRule, dailyRule, describeRule, todayIn, weeklyRule } from './rrule.js';

const STATE_COLORS = {
  playing: '#16a34a',
  idle: '#3b82f6',
  fallback: '#f59e0b',
  offline: '#4b5563',
  fault: '#dc2626',
  muted: '#9333ea',
};
const STATES = Object.keys(STATE_COLORS);
const ROLE_RANK = { viewer: 0, speaker: 1, operator: 2, admin: 3 };
const PAGE_SIZE = 50;
const WS_BACKOFF_MIN_MS = 500;
const WS_BACKOFF_MAX_MS = 15000;

// ---------------------------------------------------------------- state
const session = { user: null, token: null };
const sites = new Map(); // name -> merged site record (DB fields + live fleet fields)
const markers = new Map(); // name -> { marker, state, radius, updatedAt, updatedWall }
const rows = new Map(); // name -> the cells of the site's row, while it is on the visible page
const positionless = new Set(); // names seen live whose position /api/sites was asked for
let zones = [];
let sources = [];
let liveAddresses = [];
let alerts = [];
let map = null;
let siteLayer = null;
let canvas = null;
let fittedToSites = false;
let route = 'map';
let sitePage = 0;
let ws = null;
let wsBackoff = WS_BACKOFF_MIN_MS;
let wsTimer = null;
let wsConnected = false;
let lastSnapshotAt = 0;
let lastEventAt = 0;
let refetchTimer = null;
let renderQueued = false;
let alertsDirty = false;
let criticalPending = [];
let talkbackSite = null; // the site whose microphone the hub is listening to, as this console last set it
let talkbackBusy = false;

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'testid') node.dataset.testid = value;
    else if (key === 'style') node.style.cssText = value; // CSSOM: the CSP forbids style attributes, not this
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---------------------------------------------------------------- API
class ApiError extends Error {
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
  return `the hub answered HTTP ${status}`;
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  let res;
  try {
    res = await fetch(`api/${path}`, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `the hub cannot be reached (${err.message})`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (res.status === 401 && path !== 'login' && session.user) {
    signedOut('Your session has ended: please sign in again.');
  }
  if (!res.ok) throw new ApiError(res.status, errorText(data, res.status));
  return data;
}

function toast(message, kind = 'info') {
  const node = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: `toast-${kind}` }, message);
  $('#toasts').append(node);
  setTimeout(() => node.remove(), kind === 'error' ? 8000 : 4000);
}

/** Runs an API action from a button or form, reporting failure to the user instead of throwing. */
async function act(fn, okMessage) {
  try {
    const result = await fn();
    if (okMessage) toast(typeof okMessage === 'function' ? okMessage(result) : okMessage, 'ok');
    return result;
  } catch (err) {
    toast(err.message || String(err), 'error');
    return undefined;
  }
}

const can = (role) => session.user && ROLE_RANK[session.user.role] >= ROLE_RANK[role];

// ---------------------------------------------------------------- formatting
function fmtTime(iso, timeZone) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    timeZone,
    weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
  });
}
function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '';
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}
function lengthText(s) {
  if (!Number.isFinite(s)) return '';
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
  if (s >= 60 && s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}
function fmtBytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
/** Loudness as 0..1 for the meters: -60 dBFS (or silence) is empty, 0 dBFS full. */
function levelFraction(dbfs) {
  if (typeof dbfs !== 'number' || !Number.isFinite(dbfs)) return 0;
  return Math.min(1, Math.max(0, (dbfs + 60) / 60));
}
function zoneName(id) {
  const zone = zones.find((z) => z.id === id);
  return zone ? zone.name : id === null || id === undefined ? '' : `#${id}`;
}
function zonesLabel(ids) {
  return !ids || ids.length === 0 ? 'all zones' : ids.map(zoneName).join(', ');
}

// ---------------------------------------------------------------- map
async function loadBaseMap() {
  const res = await fetch('karachi.geojson');
  const geo = await res.json();
  const base = L.geoJSON(geo, {
    renderer: L.svg({ pane: 'base' }),
    pane: 'base',
    interactive: false,
    style: (f) => {
      if (f.properties.kind === 'sea') return { stroke: false, fillColor: '#c9dff0', fillOpacity: 1 };
      if (f.properties.kind === 'coast') return { color: '#6b93b8', weight: 1.5 };
      return { color: '#9aa7b4', weight: 1, fillColor: '#f4f1e8', fillOpacity: 1 };
    },
  }).addTo(map);
  for (const f of geo.features) {
    if (f.properties.kind !== 'district') continue;
    L.tooltip({ permanent: true, direction: 'center', className: 'district-label', interactive: false })
      .setLatLng([f.properties.label_lat, f.properties.label_lon])
      .setContent(f.properties.name)
      .addTo(map);
  }
  const districts = geo.features.filter((f) => f.properties.kind === 'district');
  if (!fittedToSites) map.fitBounds(L.geoJSON({ type: 'FeatureCollection', features: districts }).getBounds());
}

/** A tile server is optional and only ever the hub's `tile_url` setting (an admin's): never a page parameter,
 * so a link cannot make the console load images from a server of someone else's choosing (the hub's CSP
 * allows that one host only). */
function tileUrl(settings) {
  return (settings && settings.tile_url) || '';
}

function initMap() {
  map = L.map('map', { zoomControl: true, preferCanvas: true, minZoom: 9, maxZoom: 18 });
  map.setView([24.88, 67.06], 11);
  // The base map gets a pane of its own under the overlays, so the site markers are always drawn above it.
  map.createPane('base').style.zIndex = '250';
  map.attributionControl.setPrefix(false);
  map.attributionControl.addAttribution('Schematic base map (approximate outlines)');
  L.control.scale({ imperial: false }).addTo(map);
  // One canvas for every site marker: thousands of SVG nodes would make panning and updates slow.
  canvas = L.canvas({ padding: 0.3 });
  siteLayer = L.layerGroup().addTo(map);
  map.on('zoomend', () => {
    for (const [name, entry] of markers) {
      const radius = markerRadius(sites.get(name) || {});
      if (radius !== entry.radius) {
        entry.marker.setRadius(radius);
        entry.radius = radius;
      }
    }
  });
  map.on('click', (ev) => {
    if (!can('admin')) return;
    const form = $('#site-form');
    form.lat.value = ev.latlng.lat.toFixed(5);
    form.lon.value = ev.latlng.lng.toFixed(5);
  });
  loadBaseMap().catch((err) => toast(`Base map not loaded: ${err.message}`, 'error'));
}

let appliedTiles = '';

function applyTiles(url) {
  if (!map) return;
  appliedTiles = url;
  if (map._citycastTiles) {
    map.removeLayer(map._citycastTiles);
    map._citycastTiles = null;
  }
  if (url) map._citycastTiles = L.tileLayer(url, { maxZoom: 19, opacity: 0.85 }).addTo(map);
}

/** Smaller dots when the whole city is in view, so thousands of sites stay legible. */
function baseRadius() {
  const zoom = map ? map.getZoom() : 12;
  return zoom <= 10 ? 3 : zoom <= 11 ? 4 : zoom <= 12 ? 5 : 6;
}

function markerRadius(site) {
  const base = baseRadius();
  if (site.state !== 'playing' && site.state !== 'fallback') return base;
  // The marker grows with the level: a live meter readable across the whole map. Half-pixel steps spare redraws.
  return base + Math.round(levelFraction(site.level_rms_dbfs) * 12) / 2;
}

function upsertMarker(site) {
  const lat = Number(site.lat);
  const lon = Number(site.lon);
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return;
  const state = STATES.includes(site.state) ? site.state : 'offline';
  const radius = markerRadius(site);
  let entry = markers.get(site.name);
  if (!entry) {
    const marker = L.circleMarker([lat, lon], {
      renderer: canvas,
      radius,
      weight: 1,
      color: '#1f2937',
      fillColor: STATE_COLORS[state],
      fillOpacity: 0.9,
    });
    marker.bindPopup(() => sitePopup(site.name), { maxWidth: 260 });
    marker.bindTooltip(() => `${site.name} · ${sites.get(site.name)?.state ?? ''}`, { direction: 'top', offset: [0, -4] });
    siteLayer.addLayer(marker);
    entry = { marker, state, radius, lat, lon, updatedAt: 0, updatedWall: 0, changedAt: 0, changedWall: 0 };
    entry.changedAt = performance.now();
    entry.changedWall = Date.now();
    markers.set(site.name, entry);
  } else {
    if (entry.lat !== lat || entry.lon !== lon) {
      entry.marker.setLatLng([lat, lon]);
      entry.lat = lat;
      entry.lon = lon;
    }
    if (entry.state !== state) {
      entry.marker.setStyle({ fillColor: STATE_COLORS[state] });
      entry.state = state;
      entry.changedAt = performance.now();
      entry.changedWall = Date.now();
    }
    if (entry.radius !== radius) {
      entry.marker.setRadius(radius);
      entry.radius = radius;
    }
    if (entry.marker.isPopupOpen()) entry.marker.getPopup().update();
  }
  entry.updatedAt = performance.now();
  entry.updatedWall = Date.now();
}

function removeMarker(name) {
  const entry = markers.get(name);
  if (entry) {
    siteLayer.removeLayer(entry.marker);
    markers.delete(name);
  }
}

function meter(dbfs, testid) {
  const node = el('span', { class: 'meter', testid }, el('span', { class: 'meter-fill' }));
  setMeter(node, dbfs);
  return node;
}
function setMeter(node, dbfs) {
  node.firstChild.style.width = `${Math.round(levelFraction(dbfs) * 100)}%`;
  node.title = typeof dbfs === 'number' && Number.isFinite(dbfs) ? `${dbfs.toFixed(1)} dBFS` : 'no level';
}

function sitePopup(name) {
  const site = sites.get(name);
  if (!site) return 'unknown site';
  const lines = el('div', { class: 'popup', testid: 'site-popup' },
    el('strong', {}, site.name),
    site.label ? el('div', { class: 'muted' }, site.label) : null,
    el('div', {}, stateBadge(site.state), ' ', site.zone || zoneName(site.zone_id)),
    el('div', {}, 'level ', meter(site.level_rms_dbfs)),
    el('div', { class: 'muted small' },
      `ch ${site.channel ?? '–'} · buffer ${site.buffer_ms ?? '–'} ms · sync ${fmtMs(site.sync_error_ms)}`),
    site.sink_error ? el('div', { class: 'small', testid: 'popup-sink-error' }, `Audio output failed: ${site.sink_error}`) : null,
  );
  if (can('operator')) {
    lines.append(el('div', { class: 'row' },
      el('button', {
        class: 'small', testid: 'popup-mute',
        onclick: () => controlSite(site, { muted: !site.muted }),
      }, site.muted ? 'Unmute' : 'Mute'),
      updatePopupListen(el('button', {
        class: 'small listen', testid: 'popup-listen', 'data-site': site.name,
        title: 'Hear this site\'s microphone in a live caller\'s return audio',
        onclick: () => setTalkback(site, talkbackSite !== site.name),
      }))));
  }
  return lines;
}

function fmtMs(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(2)} ms` : '–';
}
function stateBadge(state) {
  return el('span', { class: `state state-${state}`, 'data-state': state }, state || 'unknown');
}

// ---------------------------------------------------------------- live site data
function mergeSite(update) {
  if (!update || typeof update.name !== 'string') return;
  let site = sites.get(update.name);
  if (!site) {
    site = { name: update.name };
    sites.set(update.name, site);
  }
  Object.assign(site, update);
  if (site.lat === undefined || site.lon === undefined) {
    // A site the page has not seen yet: its position comes from /api/sites (asked once per new name).
    if (!positionless.has(site.name)) {
      positionless.add(site.name);
      scheduleRefetch();
    }
    return;
  }
  if (map) upsertMarker(site);
  updateRow(site);
}

function scheduleRefetch() {
  if (refetchTimer) return;
  refetchTimer = setTimeout(() => {
    refetchTimer = null;
    loadSites().catch(() => {});
  }, 1000);
}

async function loadSites() {
  const list = await api('GET', 'sites');
  const seen = new Set();
  for (const site of list) {
    seen.add(site.name);
    mergeSite(site);
  }
  for (const name of [...sites.keys()]) {
    if (!seen.has(name)) {
      sites.delete(name);
      removeMarker(name);
    }
  }
  fitToSites();
  queueRender();
}

function fitToSites() {
  if (fittedToSites || !map || markers.size === 0) return;
  const bounds = L.latLngBounds([...markers.values()].map((m) => [m.lat, m.lon]));
  if (bounds.isValid()) {
    map.fitBounds(bounds.pad(0.2), { maxZoom: 12 });
    fittedToSites = true;
  }
}

/** Coalesces redraws of the summaries into one per frame, however many events arrive in between. */
function queueRender(what = {}) {
  if (what.alerts) alertsDirty = true;
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderCounts();
    if (alertsDirty) {
      alertsDirty = false;
      renderAlerts();
    }
  });
}

function countByState() {
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const site of sites.values()) counts[STATES.includes(site.state) ? site.state : 'offline'] += 1;
  return counts;
}

function renderCounts() {
  const counts = countByState();
  const legend = $('#legend');
  if (!legend.childElementCount) {
    for (const state of STATES) {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = STATE_COLORS[state];
      legend.append(el('li', { testid: `count-${state}`, 'data-state': state },
        swatch, el('span', { class: 'legend-name' }, state), el('span', { class: 'count' }, '0')));
    }
  }
  for (const state of STATES) $(`[data-state="${state}"] .count`, legend).textContent = String(counts[state]);
  $('#sites-total').textContent = `${sites.size}`;
}

// ---------------------------------------------------------------- on air
function renderOnAir() {
  for (const list of [$('#onair-side'), $('#onair-main')]) {
    list.replaceChildren();
    if (liveAddresses.length === 0) list.append(el('li', { class: 'muted empty' }, 'Nothing on air.'));
    for (const a of liveAddresses) {
      list.append(el('li', { class: `onair prio-${a.priority}`, testid: 'onair-item', 'data-address-id': a.id },
        el('div', { class: 'onair-head' },
          el('span', { class: 'live-dot' }),
          el('strong', {}, a.title),
          el('span', { class: `prio prio-${a.priority}` }, a.priority)),
        el('div', { class: 'muted small' },
          `${zonesLabel(a.zone_ids)} · channel ${a.channel} · ${a.source} · since ${fmtTime(a.started_at)}`,
          a.status && a.status !== 'live' ? ` · ${a.status}` : ''),
        can('operator')
          ? el('button', { class: 'danger small', testid: 'onair-stop', onclick: () => stopAddress(a) }, 'Stop')
          : null));
    }
  }
  const badge = $('#onair-badge');
  badge.hidden = liveAddresses.length === 0;
  badge.textContent = String(liveAddresses.length);
}

async function stopAddress(address) {
  await act(() => api('POST', `addresses/${address.id}/stop`), `Stopped “${address.title}”`);
  liveAddresses = liveAddresses.filter((a) => a.id !== address.id);
  renderOnAir();
  if (route === 'onair') loadAddresses();
}

function zoneChecks(fieldset, prefix) {
  const legend = fieldset.querySelector('legend');
  fieldset.replaceChildren(legend);
  const all = el('input', { type: 'checkbox', name: 'all', checked: true, testid: `${prefix}-zone-all` });
  fieldset.append(el('label', { class: 'inline strong' }, all, ' all zones'));
  for (const zone of zones) {
    const box = el('input', { type: 'checkbox', name: 'zone', value: String(zone.id), testid: `${prefix}-zone-${zone.name}` });
    const swatch = el('span', { class: 'swatch' });
    swatch.style.background = zone.color || '#888';
    fieldset.append(el('label', { class: 'inline' }, box, ' ', swatch, zone.name));
  }
  // "all" and single zones exclude each other: an empty zone list means every zone to the hub.
  fieldset.addEventListener('change', (ev) => {
    if (ev.target === all && all.checked) $$('input[name=zone]', fieldset).forEach((b) => { b.checked = false; });
    if (ev.target.name === 'zone') all.checked = !$$('input[name=zone]', fieldset).some((b) => b.checked);
  });
}

function checkedZones(fieldset) {
  return $$('input[name=zone]:checked', fieldset).map((b) => Number(b.value));
}

function fillSources(select) {
  const current = select.value;
  select.replaceChildren(...sources.map((s) => el('option', { value: s.id }, s.label || s.id)));
  if (current && sources.some((s) => s.id === current)) select.value = current;
}

async function startAddress(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = {
    title: form.title.value.trim(),
    source: form.source.value,
    zone_ids: checkedZones($('fieldset.zones', form)),
    priority: form.priority.value,
  };
  if (form.duration_s.value) body.duration_s = Number(form.duration_s.value);
  const address = await act(() => api('POST', 'addresses', body), (a) => `On air: “${a.title}” on channel ${a.channel}`);
  if (address) {
    form.title.value = '';
    if (!liveAddresses.some((a) => a.id === address.id)) liveAddresses = [address, ...liveAddresses];
    renderOnAir();
    loadAddresses();
  }
}

/** Where speakers call, who is on, and whether the public number (the trunk registration) works. */
async function loadTelephone() {
  const t = await act(() => api('GET', 'telephone'));
  const node = $('#telephone-status');
  if (!t) return;
  if (!t.enabled) {
    node.replaceChildren(el('span', { class: 'muted' }, 'Telephone off (the hub runs without --sip).'));
    return;
  }
  const parts = [el('strong', {}, 'Telephone '), `sip:${t.sip} · ${t.calls} call${t.calls === 1 ? '' : 's'}, ${t.live} on air`];
  const r = t.registration;
  if (r) {
    const ok = r.status === 'registered';
    parts.push(' · trunk ', el('span', { class: ok ? 'trunk-ok' : 'error', testid: 'trunk-status', 'data-status': r.status },
      ok ? `${r.aor} registered` : `${r.aor} ${r.status}${r.error ? `: ${r.error}` : ''}`));
  }
  node.replaceChildren(...parts);
}

async function loadAddresses() {
  loadTelephone();
  const list = await act(() => api('GET', 'addresses?limit=50'));
  if (!list) return;
  $('#addresses-body').replaceChildren(...list.map((a) => el('tr', { testid: 'address-row' },
    el('td', {}, fmtTime(a.started_at)), el('td', {}, a.title), el('td', { class: 'hide-phone' }, a.source),
    el('td', {}, el('span', { class: `prio prio-${a.priority}` }, a.priority)),
    el('td', { class: 'hide-phone' }, String(a.channel)),
    el('td', {}, a.status, a.end_reason ? el('span', { class: 'muted' }, ` (${a.end_reason})`) : null),
    el('td', { class: 'hide-phone' }, String(a.sites_reached ?? '')), el('td', { class: 'hide-phone' }, a.speaker || ''))));
}

// ---------------------------------------------------------------- sites & zones
function filteredSites() {
  const q = $('#site-filter').value.trim().toLowerCase();
  const all = [...sites.values()].sort((a, b) => a.name.localeCompare(b.name));
  if (!q) return all;
  return all.filter((s) => [s.name, s.label, s.zone, s.state].some((v) => v && String(v).toLowerCase().includes(q)));
}

function renderSitesTable() {
  const list = filteredSites();
  const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
  sitePage = Math.min(sitePage, pages - 1);
  const shown = list.slice(sitePage * PAGE_SIZE, (sitePage + 1) * PAGE_SIZE);
  rows.clear();
  $('#sites-body').replaceChildren(...shown.map(siteRow));
  $('#page-info').textContent = `${list.length ? sitePage * PAGE_SIZE + 1 : 0}–${sitePage * PAGE_SIZE + shown.length} of ${list.length}`;
  $('#page-prev').disabled = sitePage === 0;
  $('#page-next').disabled = sitePage >= pages - 1;
}

function siteRow(site) {
  const cells = {
    state: el('td', {}),
    level: el('td', {}),
    sync: el('td', { class: 'num hide-phone' }),
    volume: el('input', {
      type: 'range', min: '0', max: '2', step: '0.05', testid: 'site-volume',
      onchange: (ev) => controlSite(site, { volume: Number(ev.target.value) }),
    }),
    volumeText: el('span', { class: 'small muted' }),
    mute: el('button', { class: 'small', testid: 'site-mute', onclick: () => controlSite(site, { muted: !site.muted }) }),
    listen: el('button', {
      class: 'small listen', testid: 'site-listen', title: 'Hear this site\'s microphone in a live caller\'s return audio',
      onclick: () => setTalkback(site, talkbackSite !== site.name),
    }),
  };
  const tr = el('tr', { testid: 'site-row', 'data-site': site.name },
    el('td', {}, el('strong', {}, site.name), site.label ? el('div', { class: 'muted small' }, site.label) : null),
    el('td', { class: 'hide-phone' }, site.zone || zoneName(site.zone_id)),
    cells.state, cells.level, cells.sync,
    el('td', { class: 'needs-operator' }, cells.volume, ' ', cells.volumeText),
    el('td', { class: 'needs-operator' }, cells.mute),
    el('td', { class: 'needs-operator' }, cells.listen));
  rows.set(site.name, cells);
  updateRow(site);
  return tr;
}

function updateRow(site) {
  const cells = rows.get(site.name);
  if (!cells) return;
  if (cells.state.dataset.state !== site.state) {
    cells.state.dataset.state = site.state;
    cells.state.replaceChildren(stateBadge(site.state));
  }
  cells.state.title = site.sink_error ? `Audio output failed: ${site.sink_error}` : '';
  if (!cells.level.firstChild) cells.level.append(meter(site.level_rms_dbfs, 'site-level'));
  else setMeter(cells.level.firstChild, site.level_rms_dbfs);
  cells.sync.textContent = fmtMs(site.sync_error_ms);
  if (document.activeElement !== cells.volume) cells.volume.value = String(site.volume ?? 1);
  cells.volumeText.textContent = `${Math.round((site.volume ?? 1) * 100)}%`;
  cells.mute.textContent = site.muted ? 'Unmute' : 'Mute';
  cells.mute.setAttribute('aria-pressed', site.muted ? 'true' : 'false');
  cells.mute.classList.toggle('on', Boolean(site.muted));
  updateListen(site.name, cells);
}

/** A headphones icon drawn inline: an emoji would show a missing-glyph box where no emoji font is installed. */
function headphonesIcon() {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  for (const [key, value] of Object.entries({
    class: 'icon', viewBox: '0 0 24 24', width: '16', height: '16', 'aria-hidden': 'true', focusable: 'false',
    fill: 'none', stroke: 'currentColor', 'stroke-width': '2', 'stroke-linecap': 'round', 'stroke-linejoin': 'round',
  })) svg.setAttribute(key, value);
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M3 18v-6a9 9 0 0 1 18 0v6'
    + 'M21 19a2 2 0 0 1-2 2h-1a2 2 0 0 1-2-2v-3a2 2 0 0 1 2-2h3z'
    + 'M3 19a2 2 0 0 0 2 2h1a2 2 0 0 0 2-2v-3a2 2 0 0 0-2-2H3z');
  svg.append(path);
  return svg;
}

function updatePopupListen(button) {
  const listening = talkbackSite === button.dataset.site;
  button.replaceChildren(headphonesIcon(), listening ? ' Stop listening' : ' Listen');
  button.setAttribute('aria-pressed', listening ? 'true' : 'false');
  button.classList.toggle('on', listening);
  button.disabled = talkbackBusy;
  return button;
}

function updateListen(name, cells) {
  const listening = talkbackSite === name;
  cells.listen.replaceChildren(headphonesIcon(), listening ? ' Stop' : ' Listen');
  cells.listen.setAttribute('aria-pressed', listening ? 'true' : 'false');
  cells.listen.classList.toggle('on', listening);
  cells.listen.disabled = talkbackBusy;
}

// ---------------------------------------------------------------- talkback
/** Opens (or closes) talkback on one site. The hub listens to one site at a time: opening another closes the
 * first, so the console shows whatever site the hub answers with, not what was asked for. */
async function setTalkback(site, on) {
  if (talkbackBusy) return;
  talkbackBusy = true;
  renderTalkback();
  try {
    const result = await act(() => api('POST', `sites/${site.id}/talkback`, { on }),
      (r) => (r.site ? `Listening to ${r.site}` : `Stopped listening to ${site.name}`));
    if (result) talkbackSite = result.site ?? null;
  } finally {
    talkbackBusy = false;
    renderTalkback();
  }
}

function renderTalkback() {
  for (const [name, cells] of rows) updateListen(name, cells);
  const indicator = $('#listening');
  indicator.hidden = !talkbackSite;
  indicator.dataset.site = talkbackSite || '';
  if (talkbackSite) {
    const site = sites.get(talkbackSite);
    indicator.replaceChildren(headphonesIcon(), ` listening to ${talkbackSite}`,
      site ? el('button', { class: 'link', testid: 'listening-stop', onclick: () => setTalkback(site, false) }, 'stop') : null);
  }
  // An open popup's button is changed in place: rebuilding the popup under the click that is being handled would
  // let the click fall through to the map, which closes the popup.
  for (const button of $$('[data-testid=popup-listen]')) updatePopupListen(button);
}

async function controlSite(site, change) {
  const result = await act(() => api('POST', `sites/${site.id}/control`, change),
    change.muted === undefined ? `${site.name}: volume ${Math.round(change.volume * 100)}%` : `${site.name} ${change.muted ? 'muted' : 'unmuted'}`);
  if (result) {
    // The hub answers with the site (or at least accepted the change): show the desired state at once.
    mergeSite({ ...(result && typeof result === 'object' && result.name === site.name ? result : {}), name: site.name, ...change });
  }
}

function renderZones() {
  const count = (id) => [...sites.values()].filter((s) => s.zone_id === id).length;
  $('#zones-body').replaceChildren(...zones.map((z) => {
    const muted = el('input', { type: 'checkbox', testid: 'zone-mute', onchange: (ev) => controlZone(z, { muted: ev.target.checked }) });
    muted.checked = Boolean(z.muted);
    return el('tr', { testid: 'zone-row', 'data-zone': z.name },
      el('td', {}, el('span', { class: 'swatch', style: `background:${z.color}` }), ' ', z.name),
      el('td', {}, String(z.channel)), el('td', {}, String(count(z.id))),
      el('td', { class: 'needs-operator' }, el('input', {
        type: 'range', min: '0', max: '2', step: '0.05', value: String(z.volume ?? 1), testid: 'zone-volume',
        title: `${Math.round((z.volume ?? 1) * 100)} %`,
        onchange: (ev) => controlZone(z, { volume: Number(ev.target.value) }),
      })),
      el('td', { class: 'needs-operator' }, el('label', { class: 'inline' }, muted, ' muted')));
  }));
  const zoneSelect = $('#site-form').zone_id;
  zoneSelect.replaceChildren(el('option', { value: '' }, '(no zone)'), ...zones.map((z) => el('option', { value: String(z.id) }, z.name)));
  $('#zones-admin-body').replaceChildren(...zones.map((z) => el('tr', {},
    el('td', {}, z.name), el('td', {}, String(z.channel)),
    el('td', {}, el('span', { class: 'swatch', style: `background:${z.color}` }), ` ${z.color}`),
    el('td', {}, confirmButton('Delete', () => act(() => api('DELETE', `zones/${z.id}`), `Zone ${z.name} deleted`).then(loadZones))))));
  zoneChecks($('#start-form fieldset.zones'), 'start');
  zoneChecks($('#schedule-form fieldset.zones'), 'sched');
  zoneChecks($('#pin-form fieldset.zones'), 'pin');
  if (route === 'pins' && can('operator')) loadPins();
}

async function controlZone(zone, change) {
  const result = await act(() => api('POST', `zones/${zone.id}/control`, change), `Zone ${zone.name}: ${change.muted === undefined ? `volume ${Math.round(change.volume * 100)}%` : change.muted ? 'muted' : 'unmuted'}`);
  if (result) Object.assign(zone, change); // the hub keeps it for the zone: the controls show it from now on
  scheduleRefetch();
}

async function loadZones() {
  zones = (await act(() => api('GET', 'zones'))) || zones;
  renderZones();
}

/** A destructive button that asks for a second click instead of a blocking dialog. */
function confirmButton(label, fn) {
  const button = el('button', { class: 'danger small', testid: `confirm-${label.toLowerCase()}` }, label);
  let armed = null;
  button.addEventListener('click', () => {
    if (armed) {
      clearTimeout(armed);
      armed = null;
      button.textContent = label;
      fn();
      return;
    }
    button.textContent = 'Sure?';
    armed = setTimeout(() => { armed = null; button.textContent = label; }, 3000);
  });
  return button;
}

// ---------------------------------------------------------------- schedule
function buildRule(form) {
  const repeat = form.repeat.value;
  if (repeat === 'weekly') return weeklyRule(form.weekday.value, form.time.value);
  if (repeat === 'daily') return dailyRule(form.time.value);
  return checkRawRule(form.raw.value);
}

function previewRule() {
  const form = $('#schedule-form');
  const preview = $('#rrule-preview');
  form.weekday.disabled = form.repeat.value !== 'weekly';
  form.raw.disabled = form.repeat.value !== 'raw';
  try {
    const rule = buildRule(form);
    preview.textContent = `${rule}  (${describeRule(rule)})`;
    preview.classList.remove('error');
  } catch (err) {
    preview.textContent = err.message;
    preview.classList.add('error');
  }
}

async function saveSchedule(ev) {
  ev.preventDefault();
  const form = ev.target;
  let rrule;
  try {
    rrule = buildRule(form);
  } catch (err) {
    toast(err.message, 'error');
    return;
  }
  const body = {
    title: form.title.value.trim(),
    rrule,
    dtstart: `${form.date.value}T${form.time.value}:00`,
    timezone: form.timezone.value.trim(),
    duration_s: Number(form.duration_s.value),
    source: form.source.value,
    zone_ids: checkedZones($('fieldset.zones', form)),
    priority: form.priority.value,
    enabled: form.enabled.checked,
  };
  const saved = await act(() => api('POST', 'schedules', body), (s) => `Schedule “${s.title}” saved`);
  if (saved) {
    form.title.value = '';
    loadSchedules();
  }
}

async function loadSchedules() {
  const list = await act(() => api('GET', 'schedules'));
  if (!list) return;
  const ul = $('#schedule-list');
  ul.replaceChildren();
  if (list.length === 0) ul.append(el('li', { class: 'muted empty' }, 'No schedules yet.'));
  for (const s of list) {
    const runs = (s.next_runs || []).map((iso) => el('li', { testid: 'next-run', 'data-iso': iso }, fmtTime(iso, s.timezone)));
    const toggle = el('input', {
      type: 'checkbox', checked: s.enabled, testid: 'sched-toggle',
      onchange: (e) => act(() => api('PATCH', `schedules/${s.id}`, { enabled: e.target.checked }),
        `“${s.title}” ${e.target.checked ? 'enabled' : 'disabled'}`).then(loadSchedules),
    });
    ul.append(el('li', { class: `schedule ${s.enabled ? '' : 'disabled'}`, testid: 'schedule-item', 'data-schedule-id': s.id },
      el('div', { class: 'onair-head' }, el('strong', {}, s.title), el('span', { class: `prio prio-${s.priority}` }, s.priority)),
      el('div', { class: 'muted small' }, `${describeRule(s.rrule)} (${s.timezone}) · for ${lengthText(s.duration_s)} · ${s.source} · ${zonesLabel(s.zone_ids)}`),
      el('div', { class: 'small' }, s.enabled ? 'Next: ' : 'Disabled. Would run: ', el('ol', { class: 'runs' }, runs)),
      el('div', { class: 'needs-operator row' },
        el('label', { class: 'inline' }, toggle, ' enabled'),
        confirmButton('Delete', () => act(() => api('DELETE', `schedules/${s.id}`), `“${s.title}” deleted`).then(loadSchedules)))));
  }
}

// ---------------------------------------------------------------- alerts
function upsertAlert(alert) {
  const i = alerts.findIndex((a) => a.id === alert.id);
  if (i >= 0) alerts[i] = { ...alerts[i], ...alert };
  else alerts.unshift(alert);
  if (alerts.length > 1 && String(alerts[0].raised_at) < String(alerts[1].raised_at)) {
    alerts.sort((a, b) => String(b.raised_at).localeCompare(String(a.raised_at)));
  }
  if (alerts.length > 500) alerts.length = 500;
}

/** A critical alert pops up a notice; a burst of them (a district losing power) makes one notice, not hundreds. */
function announceCritical(alert) {
  criticalPending.push(alert);
  if (criticalPending.length > 1) return;
  setTimeout(() => {
    const batch = criticalPending;
    criticalPending = [];
    toast(batch.length === 1 ? alertSubject(batch[0]) + batch[0].message : `${batch.length} critical alerts: see Alerts`, 'error');
  }, 1000);
}

/** "site: " for a site's alert; nothing for one about the hub itself (a pin_abuse alert names its caller). */
function alertSubject(alert) {
  return alert.site ? `${alert.site}: ` : '';
}

function renderAlerts() {
  const activeOnly = $('#alerts-active-only').checked;
  const shown = alerts.filter((a) => !activeOnly || !a.cleared_at);
  const ul = $('#alert-list');
  ul.replaceChildren();
  if (shown.length === 0) ul.append(el('li', { class: 'muted empty' }, 'No alerts.'));
  for (const a of shown.slice(0, 200)) {
    ul.append(el('li', { class: `alert sev-${a.severity} ${a.cleared_at ? 'cleared' : ''}`, testid: 'alert-item', 'data-severity': a.severity, 'data-kind': a.kind },
      el('span', { class: 'sev' }, a.severity),
      el('span', { class: 'when' }, fmtTime(a.raised_at)),
      a.site ? el('strong', {}, a.site) : el('strong', { class: 'muted' }, a.kind === 'pin_abuse' ? 'telephone' : 'hub'),
      el('span', { class: 'kind' }, a.kind),
      el('span', { class: 'msg' }, a.message),
      a.cleared_at ? el('span', { class: 'muted small' }, `cleared ${fmtTime(a.cleared_at)}`) : null));
  }
  const active = alerts.filter((a) => !a.cleared_at).length;
  const badge = $('#alert-badge');
  badge.hidden = active === 0;
  badge.textContent = String(active);
}

async function loadAlerts() {
  const list = await act(() => api('GET', 'alerts'));
  if (!list) return;
  for (const a of list) upsertAlert(a);
  alerts.sort((a, b) => String(b.raised_at).localeCompare(String(a.raised_at)));
  renderAlerts();
}

// ---------------------------------------------------------------- recordings
async function loadRecordings() {
  const list = await act(() => api('GET', 'recordings'));
  if (!list) return;
  const body = $('#recordings-body');
  body.replaceChildren(...list.map((r) => el('tr', { testid: 'recording-row', 'data-recording-id': r.id },
    el('td', {}, fmtTime(r.started_at)), el('td', {}, r.title || `address ${r.address_id ?? ''}`),
    el('td', {}, String(r.channel)), el('td', {}, r.ended_at ? fmtDuration(r.duration_s) : `${fmtDuration(r.duration_s)} (recording)`),
    el('td', {}, fmtBytes(r.bytes)),
    el('td', { class: 'actions' },
      el('button', { class: 'small', testid: 'recording-play', onclick: () => playRecording(r) }, '▶ Play'),
      el('a', { href: `api/recordings/${r.id}/audio?download=1`, download: '', testid: 'recording-download' }, 'Download')))));
  if (list.length === 0) body.append(el('tr', {}, el('td', { colspan: '6', class: 'muted' }, 'No recordings yet.')));
}

function playRecording(r) {
  const player = $('#player');
  $('#player-title').textContent = `${r.title || 'Recording'} · ${fmtTime(r.started_at)}`;
  player.src = `api/recordings/${r.id}/audio`;
  player.dataset.recordingId = String(r.id);
  player.play().catch(() => {}); // autoplay may be refused: the controls are there
}

// ---------------------------------------------------------------- speaker PINs
/** A datetime-local value (this browser's time) as an aware ISO time for the hub; null when left empty. */
function localToIso(value) {
  if (!value) return null;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new Error(`not a time: ${value}`);
  return d.toISOString();
}

/** A validity bound: with its year, as a PIN may be given for years ahead (fmtTime leaves the year out). */
function fmtDay(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit' });
}

function validityText(p) {
  if (!p.valid_from && !p.valid_until) return 'always';
  const from = p.valid_from ? `from ${fmtDay(p.valid_from)}` : '';
  const until = p.valid_until ? `until ${fmtDay(p.valid_until)}` : '';
  return [from, until].filter(Boolean).join(' ');
}

async function loadPins() {
  const list = await act(() => api('GET', 'pins'));
  if (!list) return;
  const body = $('#pins-body');
  body.replaceChildren(...list.map(pinRow));
  if (list.length === 0) body.append(el('tr', {}, el('td', { colspan: '8', class: 'muted' }, 'No speaker PINs yet.')));
}

function pinRow(p) {
  const toggle = el('input', {
    type: 'checkbox', checked: p.enabled, testid: 'pin-toggle', 'aria-label': `PIN for ${p.label} enabled`,
    onchange: async (e) => {
      const on = e.target.checked;
      const ok = await act(() => api('PATCH', `pins/${p.id}`, { enabled: on }), `PIN for “${p.label}” ${on ? 'enabled' : 'disabled'}`);
      if (!ok) e.target.checked = !on; // refused (e.g. too many enabled PINs with the same last digits)
      loadPins();
    },
  });
  const status = !p.enabled ? 'disabled' : p.valid_now ? 'valid now' : 'not valid now';
  // A PIN being guessed is locked (even its right number is refused) until an operator unlocks or renumbers it.
  const locked = p.locked_until ? el('div', { class: 'small danger', testid: 'pin-locked' },
    `locked until ${fmtTime(p.locked_until)}: being guessed (${p.recent_failures} recent wrong PINs)`) : null;
  const weak = p.weak ? el('div', { class: 'small muted', testid: 'pin-weak' }, 'weak: fewer than 6 digits, give it a new number') : null;
  const renumber = async () => {
    const r = await act(() => api('POST', `pins/${p.id}/rotate`), `PIN for “${p.label}” has a new number`);
    if (r && r.pin) {
      $('#pin-once-label').textContent = r.label;
      $('#pin-once-value').textContent = r.pin;
      $('#pin-once').hidden = false;
    }
    loadPins();
  };
  return el('tr', { class: p.valid_now ? '' : 'inactive', testid: 'pin-row', 'data-pin-id': p.id, 'data-label': p.label },
    el('td', {}, el('strong', {}, p.label)),
    el('td', { class: 'num', testid: 'pin-hint' }, `••${p.pin_hint}`),
    el('td', { class: 'hide-phone' }, zonesLabel(p.zone_ids)),
    el('td', {}, el('span', { class: `prio prio-${p.priority}` }, p.priority)),
    el('td', { class: 'hide-phone', testid: 'pin-validity' }, validityText(p), el('div', { class: 'muted small' }, status), locked, weak),
    el('td', { class: 'hide-phone', testid: 'pin-last-used' }, p.last_used_at ? fmtTime(p.last_used_at) : el('span', { class: 'muted' }, 'never')),
    el('td', {}, el('label', { class: 'inline' }, toggle)),
    el('td', {},
      p.locked_until ? el('button', { class: 'small', testid: 'pin-unlock',
        onclick: () => act(() => api('POST', `pins/${p.id}/unlock`), `PIN for “${p.label}” unlocked`).then(loadPins) }, 'Unlock') : null,
      confirmButton('New number', renumber),
      confirmButton('Delete', () => act(() => api('DELETE', `pins/${p.id}`), `PIN for “${p.label}” deleted`).then(loadPins))));
}

async function createPin(ev) {
  ev.preventDefault();
  const form = ev.target;
  let body;
  try {
    body = {
      label: form.label.value.trim(),
      zone_ids: checkedZones($('fieldset.zones', form)),
      priority: form.priority.value,
      valid_from: localToIso(form.valid_from.value),
      valid_until: localToIso(form.valid_until.value),
    };
  } catch (err) {
    toast(err.message, 'error');
    return;
  }
  if (form.mode.value === 'typed') body.pin = form.pin.value.trim();
  const created = await act(() => api('POST', 'pins', body), (p) => `PIN for “${p.label}” created (ends in ${p.pin_hint})`);
  if (!created) return;
  form.label.value = '';
  form.pin.value = '';
  form.valid_from.value = '';
  form.valid_until.value = '';
  if (created.pin) {
    // The hub shows a generated PIN this once: it keeps only a hash and the last two digits.
    $('#pin-once-label').textContent = created.label;
    $('#pin-once-value').textContent = created.pin;
    $('#pin-once').hidden = false;
  } else {
    dismissPin();
  }
  loadPins();
}

function dismissPin() {
  $('#pin-once').hidden = true;
  $('#pin-once-value').textContent = '';
  $('#pin-once-label').textContent = '';
}

// ---------------------------------------------------------------- admin
async function addSite(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { name: form.name.value.trim(), label: form.label.value.trim(), lat: Number(form.lat.value), lon: Number(form.lon.value) };
  if (form.zone_id.value) body.zone_id = Number(form.zone_id.value);
  const result = await act(() => api('POST', 'sites', body), (r) => `Site ${r.site.name} added`);
  if (result) {
    $('#enrol-command').textContent = result.enrol_command;
    $('#enrol-result').hidden = false;
    mergeSite(result.site);
    queueRender();
  }
}

async function loadUsers() {
  const list = await act(() => api('GET', 'users'));
  if (!list) return;
  $('#users-body').replaceChildren(...list.map((u) => {
    const role = el('select', {
      testid: 'user-role-select',
      onchange: (e) => act(() => api('PATCH', `users/${u.id}`, { role: e.target.value }), `${u.username} is now ${e.target.value}`).then(loadUsers),
    }, ...Object.keys(ROLE_RANK).map((r) => el('option', { value: r, selected: r === u.role }, r)));
    const self = session.user && session.user.id === u.id;
    return el('tr', { testid: 'user-row', 'data-user': u.username },
      el('td', {}, u.username, self ? el('span', { class: 'muted' }, ' (you)') : null), el('td', {}, role),
      el('td', {}, self ? null : confirmButton('Delete', () => act(() => api('DELETE', `users/${u.id}`), `${u.username} deleted`).then(loadUsers))));
  }));
}

async function addUser(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { username: form.username.value.trim(), password: form.password.value, role: form.role.value };
  if (await act(() => api('POST', 'users', body), `User ${body.username} added`)) {
    form.reset();
    loadUsers();
  }
}

async function addZone(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { name: form.name.value.trim(), channel: Number(form.channel.value), color: form.color.value };
  if (await act(() => api('POST', 'zones', body), `Zone ${body.name} added`)) {
    form.reset();
    loadZones();
  }
}

async function loadSettings() {
  const settings = await act(() => api('GET', 'settings'));
  if (settings) {
    $('#settings-form').retention_days.value = settings.retention_days ?? '';
    $('#settings-form').tile_url.value = settings.tile_url || '';
  }
  return settings;
}

async function saveSettings(ev) {
  ev.preventDefault();
  const days = Number(ev.target.retention_days.value);
  const body = { retention_days: days, tile_url: ev.target.tile_url.value.trim() };
  const saved = await act(() => api('PUT', 'settings', body), days ? `Recordings are kept ${days} days` : 'Settings saved');
  // The page's CSP names the tile host it was served with: a new one is allowed from the next page load.
  if (saved && saved.tile_url !== appliedTiles) toast('The map tiles change when the console is reloaded', 'ok');
}

// ---------------------------------------------------------------- live updates
function setConn(state, text) {
  const node = $('#conn');
  node.dataset.state = state;
  node.textContent = text || state;
}

function connectWs() {
  clearTimeout(wsTimer);
  if (!session.user) return;
  const url = new URL('api/ws', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  // The HttpOnly session cookie authenticates the feed: a token in the URL would end up in logs and history.
  setConn('connecting', 'connecting…');
  const socket = new WebSocket(url);
  ws = socket;
  socket.onmessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return; // not ours to crash on
    }
    handleEvent(msg);
  };
  socket.onclose = () => {
    if (ws !== socket) return;
    wsConnected = false;
    ws = null;
    if (!session.user) {
      setConn('offline');
      return;
    }
    // Back off, with jitter, so a restarted hub is not hit by every console at the same instant.
    const delay = wsBackoff * (0.75 + Math.random() * 0.5);
    wsBackoff = Math.min(WS_BACKOFF_MAX_MS, wsBackoff * 2);
    setConn('offline', `reconnecting in ${Math.ceil(delay / 1000)} s`);
    wsTimer = setTimeout(() => {
      // The session may have ended while we were away: ask before reconnecting.
      api('GET', 'me').then(connectWs, (err) => {
        if (err.status !== 401) connectWs();
      });
    }, delay);
  };
}

function handleEvent(msg) {
  lastEventAt = performance.now();
  switch (msg.type) {
    case 'snapshot': {
      wsConnected = true;
      wsBackoff = WS_BACKOFF_MIN_MS;
      lastSnapshotAt = performance.now();
      setConn('live');
      for (const site of msg.sites || []) mergeSite(site);
      liveAddresses = msg.addresses || [];
      for (const a of msg.alerts || []) upsertAlert(a);
      renderOnAir();
      queueRender({ alerts: true });
      fitToSites();
      break;
    }
    case 'sites':
      for (const site of msg.sites || []) mergeSite(site);
      break;
    case 'alert':
      if (msg.alert) {
        upsertAlert(msg.alert);
        queueRender({ alerts: true });
        if (!msg.alert.cleared_at && msg.alert.severity === 'critical') announceCritical(msg.alert);
      }
      break;
    case 'addresses':
      liveAddresses = msg.addresses || [];
      renderOnAir();
      break;
    default:
      break;
  }
  queueRender();
}

// ---------------------------------------------------------------- routing & session
const VIEWS = ['map', 'onair', 'sites', 'schedule', 'alerts', 'recordings', 'pins', 'admin'];

function onRoute() {
  const name = location.hash.replace(/^#\/?/, '') || 'map';
  route = VIEWS.includes(name) ? name : 'map';
  for (const view of $$('.view')) view.hidden = view.dataset.view !== route;
  for (const link of $$('.tabs a')) link.classList.toggle('active', link.dataset.route === route);
  if (!session.user) return;
  if (route === 'map' && map) setTimeout(() => map.invalidateSize(), 0);
  if (route === 'onair') loadAddresses();
  if (route === 'sites') { renderZones(); renderSitesTable(); } else rows.clear();
  if (route === 'schedule') { previewRule(); loadSchedules(); }
  if (route === 'alerts') loadAlerts();
  if (route === 'recordings') loadRecordings();
  if (route === 'pins' && can('operator')) loadPins();
  if (route === 'admin' && can('admin')) { loadUsers(); loadSettings(); }
}

function showLogin(message) {
  $('#shell').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
  $('#login-form').username.focus();
}

function signedOut(message) {
  session.user = null;
  session.token = null;
  if (ws) {
    const old = ws;
    ws = null;
    old.close();
  }
  clearTimeout(wsTimer);
  wsConnected = false;
  setConn('offline');
  // The hub goes on listening until told otherwise; this page forgets it, as it forgets everything of the session.
  talkbackSite = null;
  renderTalkback();
  dismissPin(); // a generated PIN must not wait on screen for whoever signs in next
  $('#golive-link').hidden = true;
  showLogin(message);
}

async function signedIn(user) {
  session.user = user;
  document.body.classList.toggle('can-operate', can('operator'));
  document.body.classList.toggle('can-admin', can('admin'));
  $('#golive-link').hidden = !can('speaker');
  $('#whoami').textContent = `${user.username} (${user.role})`;
  $('#login').hidden = true;
  $('#shell').hidden = false;
  if (!map) initMap();
  setTimeout(() => map.invalidateSize(), 0);
  const [settings] = await Promise.all([
    api('GET', 'settings').catch(() => null),
    loadZones(),
    (async () => {
      sources = (await act(() => api('GET', 'sources'))) || [];
      fillSources($('#start-form').source);
      fillSources($('#schedule-form').source);
    })(),
  ]);
  applyTiles(tileUrl(settings));
  await act(loadSites);
  // Whoever opened talkback (another operator, or this one before a reload), the badge shows the hub's truth.
  const listening = await api('GET', 'talkback').catch(() => null);
  talkbackSite = listening ? listening.site ?? null : null;
  renderTalkback();
  connectWs();
  onRoute();
}

async function login(ev) {
  ev.preventDefault();
  const form = ev.target;
  $('#login-error').textContent = '';
  try {
    const result = await api('POST', 'login', { username: form.username.value.trim(), password: form.password.value });
    session.token = result.token; // kept in memory only; the HttpOnly cookie carries the session across reloads
    form.password.value = '';
    await signedIn(result.user);
  } catch (err) {
    $('#login-error').textContent = err.status === 401 ? 'Wrong user name or password.' : err.message;
  }
}

async function logout() {
  await api('POST', 'logout').catch(() => {});
  sites.clear();
  for (const name of [...markers.keys()]) removeMarker(name);
  fittedToSites = false;
  signedOut('Signed out.');
}

function init() {
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);
  $('#start-form').addEventListener('submit', startAddress);
  $('#schedule-form').addEventListener('submit', saveSchedule);
  $('#schedule-form').addEventListener('input', previewRule);
  $('#site-form').addEventListener('submit', addSite);
  $('#user-form').addEventListener('submit', addUser);
  $('#zone-form').addEventListener('submit', addZone);
  $('#settings-form').addEventListener('submit', saveSettings);
  $('#pin-form').addEventListener('submit', createPin);
  $('#pin-form').addEventListener('change', (ev) => {
    if (ev.target.name !== 'mode') return;
    const typed = ev.target.form.mode.value === 'typed';
    ev.target.form.pin.disabled = !typed;
    ev.target.form.pin.required = typed;
    if (typed) ev.target.form.pin.focus();
  });
  $('#pin-once-dismiss').addEventListener('click', dismissPin);
  $('#alerts-active-only').addEventListener('change', renderAlerts);
  $('#site-filter').addEventListener('input', () => { sitePage = 0; renderSitesTable(); });
  $('#page-prev').addEventListener('click', () => { sitePage -= 1; renderSitesTable(); });
  $('#page-next').addEventListener('click', () => { sitePage += 1; renderSitesTable(); });
  $('#enrol-copy').addEventListener('click', () => navigator.clipboard?.writeText($('#enrol-command').textContent));
  const weekday = $('#schedule-form').weekday;
  weekday.replaceChildren(...WEEKDAYS.map(([code, name]) => el('option', { value: code }, name)));
  weekday.value = 'FR';
  $('#schedule-form').date.value = todayIn('Asia/Karachi');
  window.addEventListener('hashchange', onRoute);
  onRoute();
  renderCounts();
  renderOnAir();
  api('GET', 'me').then(signedIn, () => showLogin());
}

// What the browser tests and the load bench inspect: a marker's current state and when it was last updated.
window.citycast = {
  markerState(name) {
    const entry = markers.get(name);
    if (!entry) return null;
    // updated*: the last update of any kind (level, state); changed*: when the state last changed.
    // *At is performance.now(), *Wall is Date.now().
    return {
      state: entry.state,
      radius: entry.radius,
      updatedAt: entry.updatedAt,
      updatedWall: entry.updatedWall,
      changedAt: entry.changedAt,
      changedWall: entry.changedWall,
    };
  },
  markerCount: () => markers.size,
  talkbackSite: () => talkbackSite,
  counts: countByState,
  site: (name) => (sites.has(name) ? { ...sites.get(name) } : null),
  status: () => ({ wsConnected, lastSnapshotAt, lastEventAt, signedIn: Boolean(session.user), route }),
  rrule: { weeklyRule, dailyRule, describeRule, checkRawRule },
  /** Centres the map on a site and opens its popup (what a click on its dot does). */
  openSite(name) {
    const entry = markers.get(name);
    if (!entry) return false;
    map.setView([entry.lat, entry.lon], Math.max(map.getZoom(), 13));
    entry.marker.openPopup();
    return true;
  },
  // Closes the live feed as a dropped network would; the console must reconnect by itself.
  dropLiveFeed: () => ws && ws.close(4000, 'dropped on purpose'),
};

init();

// A hub started with --insecure says so on every page, the login page too: on a plaintext wire anyone on the
// path can read the logins and change what the loudspeakers get.
(async () => {
  try {
    const res = await fetch('api/transport');
    if (!res.ok || !(await res.json()).insecure) return;
    const banner = document.createElement('div');
    banner.id = 'insecure-banner';
    banner.setAttribute('role', 'alert');
    banner.textContent = 'INSECURE: this hub runs with --insecure. NATS and HTTP are plaintext: anyone on the network '
      + 'path can read logins and change what the loudspeakers play. Restart it without --insecure.';
    document.body.prepend(banner);
  } catch (e) {
    // The console works without the banner; /metrics still shows citycast_insecure.
  }
})();
