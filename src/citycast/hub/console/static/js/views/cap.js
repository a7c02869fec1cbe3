// Alerts from the authorities (CAP): each message received and what became of it (on air, updated, cancelled,
// expired, refused…), and for the one chosen its area drawn on a map with the sites it reached (GET /api/cap/alerts).
// Leaflet is the vendor script loaded before the modules: the global `L`.
import { api } from '../api.js';
import { fmtTime } from '../format.js';
import { t, tOr } from '../i18n.js';
import { can, state, subscribe } from '../store.js';
import { $, act, el } from '../ui.js';

const AREA_COLOR = '#2563eb';
const REACHED_COLOR = '#dc2626';

function capMap() {
  const made = { map: null, layer: null };
  return function draw(alert) {
    if (typeof L === 'undefined') return; // the list says it all without the map
    if (!made.map) {
      made.map = L.map('cap-map', { zoomControl: true, minZoom: 5, maxZoom: 18 }); // SVG: a few shapes
      made.layer = L.layerGroup().addTo(made.map);
    }
    made.layer.clearLayers();
    let bounds = null;
    if (alert.area) {
      const area = L.geoJSON(alert.area, { style: { color: AREA_COLOR, weight: 2, fillOpacity: 0.15 } });
      area.addTo(made.layer);
      bounds = area.getBounds();
    }
    const reached = new Set(alert.sites);
    for (const site of state.sites.values()) {
      if (site.lat == null || site.lon == null) continue;
      const hit = reached.has(site.name);
      L.circleMarker([site.lat, site.lon], {
        radius: hit ? 7 : 4, weight: 1, color: '#111827', fillColor: hit ? REACHED_COLOR : '#9ca3af', fillOpacity: 0.9,
      }).bindTooltip(`${site.name}${hit ? `: ${t('cap.reached')}` : ''}`).addTo(made.layer);
    }
    if (bounds && bounds.isValid()) made.map.fitBounds(bounds.pad(0.2), { maxZoom: 15 });
    else made.map.setView([24.9, 67.05], 11);
    setTimeout(() => made.map.invalidateSize(), 0); // the view was hidden when the map was made
  };
}

function render(list, draw) {
  const ul = $('#cap-list');
  ul.replaceChildren();
  if (list.length === 0) ul.append(el('li', { class: 'muted empty' }, t('cap.none')));
  for (const a of list) {
    const item = el('li', { class: `alert cap-${a.outcome}`, testid: 'cap-item', 'data-outcome': a.outcome },
      el('span', { class: 'sev' }, tOr(`cap_outcome.${a.outcome}`, a.outcome.replace('_', ' '))),
      el('span', { class: 'when' }, fmtTime(a.received_at)),
      el('strong', {}, a.headline || a.identifier || t('cap.unreadable')),
      el('span', { class: 'kind' }, [a.msg_type, a.priority && tOr(`priority.${a.priority}`, a.priority), a.signed ? t('cap.signed') : '']
        .filter(Boolean).join(' · ')),
      el('span', { class: 'msg' }, a.sites.length
        ? t('cap.sites', { count: a.sites.length, sites: a.sites.join(t('list.sep')) }) : a.detail),
      el('span', { class: 'muted small' }, a.origin));
    item.addEventListener('click', () => draw(a));
    ul.append(item);
  }
  const first = list.find((a) => a.area);
  if (first) draw(first);
}

/** The admin's settings form: feeds, poll interval, repeats, signatures (the certificates are kept as they are). */
function settingsForm() {
  const form = $('#cap-settings-form');
  let certs = [];
  async function load() {
    delete form.dataset.edited;
    const st = await act(() => api('GET', 'cap/settings'));
    if (!st) return;
    certs = st.authority_certs;
    // What the admin typed before this answer came (a slow link) is kept: only the feeds' status is shown.
    if (!form.dataset.edited) {
      form.feeds.value = st.feeds.join('\n');
      form.poll_s.value = st.poll_s;
      form.repeats.value = st.repeats;
      form.require_signature.checked = st.require_signature;
    }
    $('#cap-feeds-status').replaceChildren(...st.feeds_status.map((f) =>
      el('li', {}, `${f.url}: ${f.error ? t('cap.feed_error', { error: f.error })
        : f.last_ok ? t('cap.feed_ok', { when: fmtTime(f.last_ok) }) : t('cap.feed_not_yet')}`)));
  }
  form.addEventListener('input', () => { form.dataset.edited = '1'; });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {
      feeds: form.feeds.value.split('\n').map((u) => u.trim()).filter(Boolean),
      poll_s: Number(form.poll_s.value),
      repeats: Number(form.repeats.value),
      require_signature: form.require_signature.checked,
      authority_certs: certs,
    };
    if (await act(() => api('PUT', 'cap/settings', body), t('cap.saved'))) load();
  });
  return load;
}

export function mountCap() {
  const draw = capMap();
  const loadSettings = settingsForm();
  subscribe('route', async () => {
    if (state.route !== 'alerts' || !state.session.user) return;
    if (can('admin')) loadSettings();
    const list = await act(() => api('GET', 'cap/alerts'));
    if (list) render(list, draw);
  });
}
