// Map view: every site as a dot on a Leaflet canvas (colour: state; size: level), the state legend and counts.
// Leaflet is the vendor script loaded before the modules: the global `L`.
import { fmtMs, levelFraction, STATE_COLORS, STATES } from '../format.js';
import { fmtNumber, t, tOr } from '../i18n.js';
import { can, countByState, state, subscribe, zoneName } from '../store.js';
import { $, el, meter, stateBadge, toast } from '../ui.js';
import { controlSite, pathsSummary } from './sites.js';
import { syncHelp } from './sites.js';
import { listenButton, setTalkback } from './talkback.js';

/** A tile server is optional and only ever the hub's `tile_url` setting (an admin's): never a page parameter,
 * so a link cannot make the console load images from a server of someone else's choosing (the hub's CSP
 * allows that one host only). */
export function tileUrl(settings) {
  return (settings && settings.tile_url) || '';
}

function sitePopup(name) {
  const site = state.sites.get(name);
  if (!site) return t('map.unknown_site');
  const lines = el('div', { class: 'popup', testid: 'site-popup' },
    el('strong', {}, site.name),
    site.label ? el('div', { class: 'muted' }, site.label) : null,
    el('div', {}, stateBadge(site.state), ' ', site.zone || zoneName(site.zone_id)),
    el('div', {}, `${t('map.level')} `, meter(site.level_rms_dbfs)),
    el('div', { class: 'muted small', title: syncHelp(site) },
      t('map.popup_line', {
        ch: site.channel ?? '–', buffer: site.buffer_ms ?? '–', sync: fmtMs(site.sync_error_ms),
      })),
    site.sink_error ? el('div', { class: 'small', testid: 'popup-sink-error' }, t('sites.sink_failed', { error: site.sink_error })) : null,
    popupPaths(site.paths),
  );
  if (can('operator')) {
    lines.append(el('div', { class: 'row' },
      el('button', {
        class: 'small', testid: 'popup-mute',
        onclick: () => controlSite(site, { muted: !site.muted }),
      }, site.muted ? t('sites.unmute') : t('sites.mute')),
      listenButton(el('button', {
        class: 'small listen', testid: 'popup-listen', 'data-site': site.name,
        title: t('talkback.listen_title'),
        onclick: () => setTalkback(site, state.talkback.site !== site.name),
      }), ` ${t('talkback.stop_listening')}`)));
  }
  return lines;
}

function popupPaths(paths) {
  const summary = pathsSummary(paths);
  if (!summary) return null;
  return el('div', { class: 'small', testid: 'popup-paths' }, summary.text,
    ...Object.entries(paths).map(([name, ok]) => el('div', { class: ok ? 'muted' : 'warn' }, `${ok ? '✓' : '✗'} ${name}`)));
}

function renderCounts() {
  const counts = countByState(STATES);
  const legend = $('#legend');
  if (!legend.childElementCount) {
    for (const s of STATES) {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = STATE_COLORS[s];
      legend.append(el('li', { testid: `count-${s}`, 'data-state': s },
        swatch, el('span', { class: 'legend-name' }, tOr(`state.${s}`, s)), el('span', { class: 'count' }, '0')));
    }
  }
  for (const s of STATES) $(`[data-state="${s}"] .count`, legend).textContent = fmtNumber(counts[s]);
  $('#sites-total').textContent = fmtNumber(state.sites.size);
}

/** Mounts the map view; the Leaflet map itself is made at the first sign-in. Returns what the page's test hook
 * and the session need. */
export function mountMap() {
  const markers = new Map(); // name -> { marker, state, radius, lat, lon, updatedAt, updatedWall, changedAt, changedWall }
  let map = null;
  let siteLayer = null;
  let canvas = null;
  let fittedToSites = false;
  let countsQueued = false;

  /** Coalesces redraws of the counts into one per frame, however many updates arrive in between. */
  function queueCounts() {
    if (countsQueued) return;
    countsQueued = true;
    requestAnimationFrame(() => {
      countsQueued = false;
      renderCounts();
    });
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
    const siteState = STATES.includes(site.state) ? site.state : 'offline';
    const radius = markerRadius(site);
    let entry = markers.get(site.name);
    if (!entry) {
      const marker = L.circleMarker([lat, lon], {
        renderer: canvas,
        radius,
        weight: 1,
        color: '#1f2937',
        fillColor: STATE_COLORS[siteState],
        fillOpacity: 0.9,
      });
      marker.bindPopup(() => sitePopup(site.name), { maxWidth: 260 });
      marker.bindTooltip(() => {
        const now = state.sites.get(site.name)?.state;
        return `${site.name} · ${now ? tOr(`state.${now}`, now) : ''}`;
      }, { direction: 'top', offset: [0, -4] });
      siteLayer.addLayer(marker);
      entry = { marker, state: siteState, radius, lat, lon, updatedAt: 0, updatedWall: 0, changedAt: 0, changedWall: 0 };
      entry.changedAt = performance.now();
      entry.changedWall = Date.now();
      markers.set(site.name, entry);
    } else {
      if (entry.lat !== lat || entry.lon !== lon) {
        entry.marker.setLatLng([lat, lon]);
        entry.lat = lat;
        entry.lon = lon;
      }
      if (entry.state !== siteState) {
        entry.marker.setStyle({ fillColor: STATE_COLORS[siteState] });
        entry.state = siteState;
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

  function fitToSites() {
    if (fittedToSites || !map || markers.size === 0) return;
    const bounds = L.latLngBounds([...markers.values()].map((m) => [m.lat, m.lon]));
    if (bounds.isValid()) {
      map.fitBounds(bounds.pad(0.2), { maxZoom: 12 });
      fittedToSites = true;
    }
  }

  async function loadBaseMap() {
    const res = await fetch('karachi.geojson');
    const geo = await res.json();
    L.geoJSON(geo, {
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

  function initMap() {
    map = L.map('map', { zoomControl: true, preferCanvas: true, minZoom: 9, maxZoom: 18 });
    map.setView([24.88, 67.06], 11);
    // The base map gets a pane of its own under the overlays, so the site markers are always drawn above it.
    map.createPane('base').style.zIndex = '250';
    map.attributionControl.setPrefix(false);
    map.attributionControl.addAttribution(t('map.attribution'));
    L.control.scale({ imperial: false }).addTo(map);
    // One canvas for every site marker: thousands of SVG nodes would make panning and updates slow.
    canvas = L.canvas({ padding: 0.3 });
    siteLayer = L.layerGroup().addTo(map);
    map.on('zoomend', () => {
      for (const [name, entry] of markers) {
        const radius = markerRadius(state.sites.get(name) || {});
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
    loadBaseMap().catch((err) => toast(t('map.base_failed', { error: err.message }), 'error'));
  }

  function applyTiles(url) {
    if (!map) return;
    state.tiles = url;
    if (map._citycastTiles) {
      map.removeLayer(map._citycastTiles);
      map._citycastTiles = null;
    }
    if (url) map._citycastTiles = L.tileLayer(url, { maxZoom: 19, opacity: 0.85 }).addTo(map);
  }

  subscribe('site', (site) => {
    if (map) upsertMarker(site);
    queueCounts();
  });
  subscribe('site-removed', (name) => {
    removeMarker(name);
    queueCounts();
  });
  subscribe('sites-stale', queueCounts); // a site seen live before its position: counted at once, drawn later
  subscribe('sites-loaded', () => {
    fitToSites();
    queueCounts();
  });
  subscribe('logout', () => {
    fittedToSites = false;
  });
  subscribe('language', () => {
    $('#legend').replaceChildren(); // drawn again with the states' names in the new language
    renderCounts();
  });
  subscribe('session', () => {
    if (!state.session.user) return;
    if (!map) initMap();
    setTimeout(() => map.invalidateSize(), 0);
  });
  subscribe('route', () => {
    if (state.session.user && state.route === 'map' && map) setTimeout(() => map.invalidateSize(), 0);
  });
  renderCounts();

  return {
    applyTiles,
    markerCount: () => markers.size,
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
    /** Centres the map on a site and opens its popup (what a click on its dot does). */
    openSite(name) {
      const entry = markers.get(name);
      if (!entry) return false;
      map.setView([entry.lat, entry.lon], Math.max(map.getZoom(), 13));
      entry.marker.openPopup();
      return true;
    },
  };
}
