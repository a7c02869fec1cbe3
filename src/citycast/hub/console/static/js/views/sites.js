// Sites view: the paged, filterable table of every site with its live state, level, sync, volume, mute and
// Listen; rows are updated in place as the live feed reports. Also the site list's loading and site control.
import { api } from '../api.js';
import { fmtMs } from '../format.js';
import { fmtNumber, t } from '../i18n.js';
import { mergeSite, notify, removeSite, state, subscribe, zoneName } from '../store.js';
import { $, act, el, meter, setMeter, stateBadge } from '../ui.js';
import { listenButton, setTalkback } from './talkback.js';

const PAGE_SIZE = 50;
const REFETCH_DELAY_MS = 1000;

// What the Sync figure means (docs/console.md "Sync error"): the site's own estimate, not counting the path's
// asymmetry that no site can measure (shown beside it, as a bound).
export function syncHelp(site) {
  const asym = site.clock_asymmetry_ms ? ` ${t('sites.sync_asym', { ms: fmtMs(site.clock_asymmetry_ms) })}` : '';
  return t('sites.sync_help') + asym;
}

/** Fetches every site (positions, zones, settings) and drops those the hub no longer has. */
export async function loadSites() {
  const list = await api('GET', 'sites');
  const seen = new Set();
  for (const site of list) {
    seen.add(site.name);
    mergeSite(site);
  }
  for (const name of [...state.sites.keys()]) {
    if (!seen.has(name)) removeSite(name);
  }
  notify('sites-loaded');
}

export async function controlSite(site, change) {
  const result = await act(() => api('POST', `sites/${site.id}/control`, change),
    change.muted === undefined
      ? t('sites.volume_set', { site: site.name, percent: fmtNumber(change.volume, { style: 'percent' }) })
      : t(change.muted ? 'sites.muted' : 'sites.unmuted', { site: site.name }));
  if (result) {
    // The hub answers with the site (or at least accepted the change): show the desired state at once.
    mergeSite({ ...(result && typeof result === 'object' && result.name === site.name ? result : {}), name: site.name, ...change });
  }
}

/** The long-haul paths (city servers) a site hears its channel through, from its telemetry's `paths`: a short
 * text ("paths 1/2"), each path named in the title, and whether one is down. Null for a site on one connection. */
export function pathsSummary(paths) {
  const entries = Object.entries(paths || {});
  if (!entries.length) return null;
  const up = entries.filter(([, ok]) => ok === true).length;
  return {
    text: t('sites.paths', { up, total: entries.length }),
    title: entries.map(([name, ok]) => `${name}: ${ok ? t('sites.path_up') : t('sites.path_down')}`).join('\n'),
    degraded: up < entries.length,
  };
}

function filteredSites() {
  const q = $('#site-filter').value.trim().toLowerCase();
  const all = [...state.sites.values()].sort((a, b) => a.name.localeCompare(b.name));
  if (!q) return all;
  return all.filter((s) => [s.name, s.label, s.zone, s.state].some((v) => v && String(v).toLowerCase().includes(q)));
}

export function mountSites() {
  const rows = new Map(); // name -> the cells of the site's row, while it is on the visible page
  let page = 0;
  let refetchTimer = null;

  function updateRow(site) {
    const cells = rows.get(site.name);
    if (!cells) return;
    if (cells.state.dataset.state !== site.state) {
      cells.state.dataset.state = site.state;
      cells.state.replaceChildren(stateBadge(site.state));
    }
    cells.state.title = site.sink_error ? t('sites.sink_failed', { error: site.sink_error }) : '';
    if (!cells.level.firstChild) cells.level.append(meter(site.level_rms_dbfs, 'site-level'));
    else setMeter(cells.level.firstChild, site.level_rms_dbfs);
    cells.sync.textContent = fmtMs(site.sync_error_ms);
    cells.sync.title = syncHelp(site);
    const paths = pathsSummary(site.paths);
    cells.paths.textContent = paths ? paths.text : '';
    cells.paths.title = paths ? paths.title : '';
    cells.paths.classList.toggle('warn', Boolean(paths && paths.degraded));
    if (document.activeElement !== cells.volume) cells.volume.value = String(site.volume ?? 1);
    cells.volumeText.textContent = fmtNumber(site.volume ?? 1, { style: 'percent' });
    cells.mute.textContent = site.muted ? t('sites.unmute') : t('sites.mute');
    cells.mute.setAttribute('aria-pressed', site.muted ? 'true' : 'false');
    cells.mute.classList.toggle('on', Boolean(site.muted));
    listenButton(cells.listen, ` ${t('talkback.stop')}`, site.name);
  }

  function siteRow(site) {
    const cells = {
      state: el('td', {}),
      level: el('td', {}),
      sync: el('span', {}),
      paths: el('div', { class: 'small muted', testid: 'site-paths' }),
      volume: el('input', {
        type: 'range', min: '0', max: '2', step: '0.05', testid: 'site-volume',
        onchange: (ev) => controlSite(site, { volume: Number(ev.target.value) }),
      }),
      volumeText: el('span', { class: 'small muted' }),
      mute: el('button', { class: 'small', testid: 'site-mute', onclick: () => controlSite(site, { muted: !site.muted }) }),
      listen: el('button', {
        class: 'small listen', testid: 'site-listen', title: t('talkback.listen_title'),
        onclick: () => setTalkback(site, state.talkback.site !== site.name),
      }),
    };
    const tr = el('tr', { testid: 'site-row', 'data-site': site.name },
      el('td', {}, el('strong', {}, site.name), site.label ? el('div', { class: 'muted small' }, site.label) : null),
      el('td', { class: 'hide-phone' }, site.zone || zoneName(site.zone_id)),
      cells.state, cells.level, el('td', { class: 'num hide-phone' }, cells.sync, cells.paths),
      el('td', { class: 'needs-operator' }, cells.volume, ' ', cells.volumeText),
      el('td', { class: 'needs-operator' }, cells.mute),
      el('td', { class: 'needs-operator' }, cells.listen));
    rows.set(site.name, cells);
    updateRow(site);
    return tr;
  }

  function renderTable() {
    const list = filteredSites();
    const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const shown = list.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    rows.clear();
    $('#sites-body').replaceChildren(...shown.map(siteRow));
    $('#page-info').textContent = t('sites.page', {
      first: list.length ? page * PAGE_SIZE + 1 : 0, last: page * PAGE_SIZE + shown.length, total: list.length,
    });
    $('#page-prev').disabled = page === 0;
    $('#page-next').disabled = page >= pages - 1;
  }

  $('#site-filter').addEventListener('input', () => { page = 0; renderTable(); });
  $('#page-prev').addEventListener('click', () => { page -= 1; renderTable(); });
  $('#page-next').addEventListener('click', () => { page += 1; renderTable(); });
  subscribe('site', updateRow);
  subscribe('talkback', () => {
    for (const [name, cells] of rows) listenButton(cells.listen, ` ${t('talkback.stop')}`, name);
  });
  subscribe('route', () => {
    if (state.route !== 'sites') rows.clear();
    else if (state.session.user) renderTable();
  });
  // Asked at most once a second, however many unknown sites or zone changes arrive in between.
  subscribe('sites-stale', () => {
    if (refetchTimer) return;
    refetchTimer = setTimeout(() => {
      refetchTimer = null;
      loadSites().catch(() => {});
    }, REFETCH_DELAY_MS);
  });
}
