// Proof of play view: per address, which sites played it fully, partly or not at all, from the receipts the sites
// signed with their own keys (GET /api/receipts…): the latest addresses, then one address on a map and as a
// table, with its CSV export and a printable page. Operators only (the hub refuses anyone else).
// Leaflet is the vendor script loaded before the modules: the global `L`.
import { api } from '../api.js';
import { fmtDuration, fmtTime } from '../format.js';
import { fmtFixed, fmtNumber, t, tOr } from '../i18n.js';
import { can, state, subscribe } from '../store.js';
import { $, act, el } from '../ui.js';

export const VERDICT_COLORS = Object.freeze({ full: '#16a34a', partly: '#f59e0b', none: '#dc2626' });
const verdictText = (verdict) => tOr(`verdict.${verdict}`, verdict);

/** A sample's time to the second ("did it play at 14:02?" is asked to the second); every real time zone is a
 * whole number of minutes from UTC, so the UTC seconds are the local ones. */
function fmtSecond(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : `${fmtTime(iso)}:${String(d.getUTCSeconds()).padStart(2, '0')}`;
}

function spanText(s) {
  if (!s.first_at) return '–';
  return s.spans.map(([a, b]) => `${fmtSecond(a)} – ${fmtSecond(b)}`).join(t('list.sep'));
}

function verdictBadge(verdict) {
  const badge = el('span', { class: `badge verdict-${verdict}`, 'data-verdict': verdict }, verdictText(verdict));
  badge.style.background = VERDICT_COLORS[verdict] || '#6b7280';
  return badge;
}

/** The view's own small map, made at its first report (the store holds no Leaflet objects). */
function receiptsMap() {
  const made = { map: null, layer: null };
  return function drawMap(report) {
    if (typeof L === 'undefined') return; // the table says it all without the map
    if (!made.map) {
      made.map = L.map('receipts-map', { zoomControl: true, minZoom: 9, maxZoom: 18 }); // SVG: a few markers
      made.layer = L.layerGroup().addTo(made.map);
    }
    drawSites(made.map, made.layer, report);
  };
}

function drawSites(map, layer, report) {
  layer.clearLayers();
  const points = [];
  for (const s of report.sites) {
    const marker = L.circleMarker([s.lat, s.lon], {
      radius: 7, weight: 1, color: '#111827', fillColor: VERDICT_COLORS[s.verdict], fillOpacity: 0.9,
    });
    marker.bindTooltip(`${s.site}: ${verdictText(s.verdict)} (${t('unit.s', { n: fmtFixed(s.played_s, 1) })})`);
    marker.addTo(layer);
    points.push([s.lat, s.lon]);
  }
  if (points.length) map.fitBounds(L.latLngBounds(points).pad(0.3), { maxZoom: 15 });
  else map.setView([24.9, 67.05], 11);
  setTimeout(() => map.invalidateSize(), 0); // the view was hidden when the map was made
}

async function showReport(id, drawMap) {
  const report = await act(() => api('GET', `receipts/${id}`));
  if (!report) return;
  const card = $('#receipts-detail');
  card.hidden = false;
  $('#receipts-title').textContent = `${report.title} · ${fmtTime(report.first_at)}`;
  const c = report.counts;
  $('#receipts-summary').replaceChildren(
    t('receipts.broadcast', { from: fmtTime(report.first_at), to: fmtTime(report.last_at), length: fmtDuration(report.duration_s) }),
    report.on_air ? ` · ${t('receipts.on_air')}` : '', ' · ',
    verdictBadge('full'), ` ${fmtNumber(c.full)}  `, verdictBadge('partly'), ` ${fmtNumber(c.partly)}  `, verdictBadge('none'), ` ${fmtNumber(c.none)}`);
  $('#receipts-csv').href = `api/receipts/${report.id}/csv`;
  $('#receipts-print').href = `api/receipts/${report.id}/print`;
  const body = $('#receipts-body');
  body.replaceChildren(...report.sites.map((s) => el('tr', { testid: 'receipt-row', 'data-site': s.site, 'data-verdict': s.verdict },
    el('td', {}, s.site, s.label ? el('div', { class: 'muted small' }, s.label) : null),
    el('td', {}, s.zone || '–'),
    el('td', {}, verdictBadge(s.verdict), s.open ? el('span', { class: 'muted small' }, ` (${t('receipts.still_coming')})`) : null),
    el('td', { class: 'small' }, spanText(s)),
    el('td', {}, fmtFixed(s.played_s, 1)),
    el('td', {}, fmtNumber(s.concealed)),
    el('td', {}, fmtFixed(s.fallback_s, 1)),
    el('td', {}, s.sync_error_ms === null ? '–' : fmtFixed(s.sync_error_ms, 2)),
    el('td', {}, s.level_rms_dbfs === null ? '–' : fmtFixed(s.level_rms_dbfs, 1)))));
  if (report.sites.length === 0) body.append(el('tr', {}, el('td', { colspan: '9', class: 'muted' }, t('receipts.no_site'))));
  drawMap(report);
}

async function loadReceipts(drawMap) {
  const list = await act(() => api('GET', 'receipts'));
  if (!list) return;
  const body = $('#receipts-list');
  body.replaceChildren(...list.map((r) => el('tr', { testid: 'receipts-address', 'data-address-id': r.id },
    el('td', {}, fmtTime(r.started_at)), el('td', {}, r.title), el('td', {}, tOr(`priority.${r.priority}`, r.priority)),
    el('td', {}, fmtNumber(r.counts.full)), el('td', {}, fmtNumber(r.counts.partly)), el('td', {}, fmtNumber(r.counts.none)),
    el('td', { class: 'actions' }, el('button', { class: 'small', testid: 'receipts-show', onclick: () => showReport(r.id, drawMap) }, t('receipts.show'))))));
  if (list.length === 0) body.append(el('tr', {}, el('td', { colspan: '7', class: 'muted' }, t('receipts.no_addresses'))));
}

export function mountReceipts() {
  const drawMap = receiptsMap();
  subscribe('route', () => {
    if (state.route === 'receipts' && state.session.user && can('operator')) loadReceipts(drawMap);
  });
}
