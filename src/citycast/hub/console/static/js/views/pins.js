// PINs view: the speakers' PINs for the telephone (and the browser's go-live page). A generated PIN is shown
// once; the list shows only each PIN's last two digits.
import { api } from '../api.js';
import { fmtDay, fmtTime, localToIso } from '../format.js';
import { can, state, subscribe, zonesLabel } from '../store.js';
import { $, act, checkedZones, confirmButton, el, toast, zoneChecks } from '../ui.js';

function validityText(p) {
  if (!p.valid_from && !p.valid_until) return 'always';
  const from = p.valid_from ? `from ${fmtDay(p.valid_from)}` : '';
  const until = p.valid_until ? `until ${fmtDay(p.valid_until)}` : '';
  return [from, until].filter(Boolean).join(' ');
}

function showOnce(label, pin) {
  $('#pin-once-label').textContent = label;
  $('#pin-once-value').textContent = pin;
  $('#pin-once').hidden = false;
}

function dismissPin() {
  $('#pin-once').hidden = true;
  $('#pin-once-value').textContent = '';
  $('#pin-once-label').textContent = '';
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
    if (r && r.pin) showOnce(r.label, r.pin);
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
  // The hub shows a generated PIN this once: it keeps only a hash and the last two digits.
  if (created.pin) showOnce(created.label, created.pin);
  else dismissPin();
  loadPins();
}

const showing = () => state.route === 'pins' && can('operator');

export function mountPins() {
  const form = $('#pin-form');
  form.addEventListener('submit', createPin);
  form.addEventListener('change', (ev) => {
    if (ev.target.name !== 'mode') return;
    const typed = ev.target.form.mode.value === 'typed';
    ev.target.form.pin.disabled = !typed;
    ev.target.form.pin.required = typed;
    if (typed) ev.target.form.pin.focus();
  });
  $('#pin-once-dismiss').addEventListener('click', dismissPin);
  // The rows name the zones: drawn again when the zones change.
  subscribe('zones', () => {
    zoneChecks($('fieldset.zones', form), 'pin');
    if (showing()) loadPins();
  });
  subscribe('route', () => {
    if (showing()) loadPins();
  });
  subscribe('session', () => {
    if (!state.session.user) dismissPin(); // a generated PIN must not wait on screen for whoever signs in next
  });
}
