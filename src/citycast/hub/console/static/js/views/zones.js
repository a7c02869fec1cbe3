// Zones: the zone table of the Sites view (site count, volume and mute kept by the hub per zone), the zone list
// and form of the Admin view, and the zone picker of the add-site form.
import { api } from '../api.js';
import { fmtId, fmtNumber, t } from '../i18n.js';
import { notify, set, state, subscribe } from '../store.js';
import { $, act, confirmButton, el } from '../ui.js';

async function controlZone(zone, change) {
  const what = change.muted === undefined
    ? t('zones.volume', { percent: fmtNumber(change.volume, { style: 'percent' }) })
    : t(change.muted ? 'zones.muted' : 'zones.unmuted');
  const result = await act(() => api('POST', `zones/${zone.id}/control`, change), t('zones.changed', { zone: zone.name, what }));
  if (result) Object.assign(zone, change); // the hub keeps it for the zone: the controls show it from now on
  notify('sites-stale');
}

export async function loadZones() {
  set('zones', (await act(() => api('GET', 'zones'))) || state.zones);
}

// A zone's chime (docs/operations.md, "Chime and amplifier power"): none, the hub's own, or a media library file.
function chimePicker(zone) {
  const files = (state.sources || []).filter((s) => s.id.startsWith('file:'));
  const select = el('select', { testid: 'zone-chime', onchange: (ev) => saveZone(zone, { chime: ev.target.value }) },
    el('option', { value: '' }, t('zones.chime_none')), el('option', { value: 'builtin' }, t('zones.chime_builtin')),
    ...files.map((s) => el('option', { value: s.id }, s.label || s.id)));
  if (zone.chime && ![...select.options].some((o) => o.value === zone.chime)) {
    select.append(el('option', { value: zone.chime }, zone.chime)); // a file no longer in the library
  }
  select.value = zone.chime || '';
  return select;
}

async function saveZone(zone, change) {
  await act(() => api('PATCH', `zones/${zone.id}`, change), t('zones.saved', { zone: zone.name }));
  loadZones(); // saved or refused (a bad lead): the row shows what the hub kept
}

function render() {
  const zones = state.zones;
  const count = (id) => [...state.sites.values()].filter((s) => s.zone_id === id).length;
  $('#zones-body').replaceChildren(...zones.map((z) => {
    const muted = el('input', { type: 'checkbox', testid: 'zone-mute', onchange: (ev) => controlZone(z, { muted: ev.target.checked }) });
    muted.checked = Boolean(z.muted);
    return el('tr', { testid: 'zone-row', 'data-zone': z.name },
      el('td', {}, el('span', { class: 'swatch', style: `background:${z.color}` }), ' ', z.name),
      el('td', {}, fmtId(z.channel)), el('td', {}, fmtNumber(count(z.id))),
      el('td', { class: 'needs-operator' }, el('input', {
        type: 'range', min: '0', max: '2', step: '0.05', value: String(z.volume ?? 1), testid: 'zone-volume',
        title: fmtNumber(z.volume ?? 1, { style: 'percent' }),
        onchange: (ev) => controlZone(z, { volume: Number(ev.target.value) }),
      })),
      el('td', { class: 'needs-operator' }, el('label', { class: 'inline' }, muted, ` ${t('zones.muted_box')}`)));
  }));
  const zoneSelect = $('#site-form').zone_id;
  zoneSelect.replaceChildren(el('option', { value: '' }, t('zones.no_zone')), ...zones.map((z) => el('option', { value: String(z.id) }, z.name)));
  $('#zones-admin-body').replaceChildren(...zones.map((z) => el('tr', {},
    el('td', {}, z.name), el('td', {}, fmtId(z.channel)),
    el('td', {}, el('span', { class: 'swatch', style: `background:${z.color}` }), ' ', el('bdi', {}, z.color)),
    el('td', {}, chimePicker(z)),
    el('td', {}, el('input', {
      type: 'number', min: '0', max: '10000', step: '100', value: String(z.start_lead_ms ?? 0), testid: 'zone-lead',
      onchange: (ev) => saveZone(z, { start_lead_ms: Number(ev.target.value) }),
    })),
    el('td', {}, confirmButton(t('action.delete'),
      () => act(() => api('DELETE', `zones/${z.id}`), t('zones.deleted', { zone: z.name })).then(loadZones), 'delete')))));
}

async function addZone(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { name: form.name.value.trim(), channel: Number(form.channel.value), color: form.color.value };
  if (await act(() => api('POST', 'zones', body), t('zones.added', { zone: body.name }))) {
    form.reset();
    loadZones();
  }
}

export function mountZones() {
  $('#zone-form').addEventListener('submit', addZone);
  subscribe('zones', render);
  subscribe('sources', () => notify('zones')); // the chime pickers list the media library's files
  subscribe('language', () => notify('zones')); // the zone tables and every form's zone picker, in the new words
  // The Sites view recounts the zones' sites when it is opened; the forms' zone pickers are drawn afresh with it.
  subscribe('route', () => {
    if (state.route === 'sites' && state.session.user) notify('zones');
  });
}
