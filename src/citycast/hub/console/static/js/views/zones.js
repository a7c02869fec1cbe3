// Zones: the zone table of the Sites view (site count, volume and mute kept by the hub per zone), the zone list
// and form of the Admin view, and the zone picker of the add-site form.
import { api } from '../api.js';
import { notify, set, state, subscribe } from '../store.js';
import { $, act, confirmButton, el } from '../ui.js';

async function controlZone(zone, change) {
  const result = await act(() => api('POST', `zones/${zone.id}/control`, change), `Zone ${zone.name}: ${change.muted === undefined ? `volume ${Math.round(change.volume * 100)}%` : change.muted ? 'muted' : 'unmuted'}`);
  if (result) Object.assign(zone, change); // the hub keeps it for the zone: the controls show it from now on
  notify('sites-stale');
}

export async function loadZones() {
  set('zones', (await act(() => api('GET', 'zones'))) || state.zones);
}

function render() {
  const zones = state.zones;
  const count = (id) => [...state.sites.values()].filter((s) => s.zone_id === id).length;
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

export function mountZones() {
  $('#zone-form').addEventListener('submit', addZone);
  subscribe('zones', render);
  // The Sites view recounts the zones' sites when it is opened; the forms' zone pickers are drawn afresh with it.
  subscribe('route', () => {
    if (state.route === 'sites' && state.session.user) notify('zones');
  });
}
