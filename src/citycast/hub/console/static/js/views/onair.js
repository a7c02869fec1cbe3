// On air view: what is on air now (also in the Map view's side panel and the tab's badge), the form that starts
// an address, and the recent addresses.
import { api } from '../api.js';
import { fmtTime } from '../format.js';
import { fmtId, fmtNumber, t, tOr } from '../i18n.js';
import { can, set, state, subscribe, zonesLabel } from '../store.js';
import { $, act, checkedZones, el, fillSources, zoneChecks } from '../ui.js';
import { loadTelephone } from './telephone.js';
import { mountDelay } from './delay.js';

function render() {
  const addresses = state.addresses;
  for (const list of [$('#onair-side'), $('#onair-main')]) {
    list.replaceChildren();
    if (addresses.length === 0) list.append(el('li', { class: 'muted empty' }, t('onair.nothing')));
    for (const a of addresses) {
      list.append(el('li', { class: `onair prio-${a.priority}`, testid: 'onair-item', 'data-address-id': a.id },
        el('div', { class: 'onair-head' },
          el('span', { class: 'live-dot' }),
          el('strong', {}, a.title),
          el('span', { class: `prio prio-${a.priority}` }, tOr(`priority.${a.priority}`, a.priority))),
        el('div', { class: 'muted small' },
          t('onair.line', { zones: zonesLabel(a.zone_ids), channel: fmtId(a.channel), source: a.source, since: fmtTime(a.started_at) }),
          a.status && a.status !== 'live' ? ` · ${tOr(`status.${a.status}`, a.status)}` : ''),
        can('operator')
          ? el('button', { class: 'danger small', testid: 'onair-stop', onclick: () => stopAddress(a) }, t('onair.stop'))
          : null));
    }
  }
  const badge = $('#onair-badge');
  badge.hidden = addresses.length === 0;
  badge.textContent = fmtNumber(addresses.length);
}

async function stopAddress(address) {
  await act(() => api('POST', `addresses/${address.id}/stop`), t('onair.stopped', { title: address.title }));
  set('addresses', state.addresses.filter((a) => a.id !== address.id));
  if (state.route === 'onair') loadAddresses();
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
  const address = await act(() => api('POST', 'addresses', body), (a) => t('onair.started', { title: a.title, channel: fmtId(a.channel) }));
  if (address) {
    form.title.value = '';
    set('addresses', state.addresses.some((a) => a.id === address.id) ? state.addresses : [address, ...state.addresses]);
    loadAddresses();
  }
}

async function loadAddresses() {
  loadTelephone();
  const list = await act(() => api('GET', 'addresses?limit=50'));
  if (!list) return;
  $('#addresses-body').replaceChildren(...list.map((a) => el('tr', { testid: 'address-row' },
    el('td', {}, fmtTime(a.started_at)), el('td', {}, a.title), el('td', { class: 'hide-phone' }, a.source),
    el('td', {}, el('span', { class: `prio prio-${a.priority}` }, tOr(`priority.${a.priority}`, a.priority))),
    el('td', { class: 'hide-phone' }, fmtId(a.channel)),
    el('td', {}, tOr(`status.${a.status}`, a.status),
      a.end_reason ? el('span', { class: 'muted' }, ` (${tOr(`reason.${a.end_reason}`, a.end_reason)})`) : null),
    el('td', { class: 'hide-phone' }, fmtNumber(a.sites_reached)), el('td', { class: 'hide-phone' }, a.speaker || ''))));
}

export function mountOnAir() {
  const form = $('#start-form');
  form.addEventListener('submit', startAddress);
  subscribe('addresses', render);
  subscribe('language', render);
  subscribe('zones', () => zoneChecks($('fieldset.zones', form), 'start'));
  subscribe('sources', () => fillSources(form.source));
  mountDelay($('#onair-main').closest('.card'));
  subscribe('route', () => {
    if (state.route === 'onair' && state.session.user) loadAddresses();
  });
  render();
}
