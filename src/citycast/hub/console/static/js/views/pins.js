// PINs view: the speakers' PINs for the telephone (and the browser's go-live page). A generated PIN is shown
// once; the list shows only each PIN's last two digits.
import { api } from '../api.js';
import { fmtDay, fmtTime, localToIso } from '../format.js';
import { LANGUAGES, t, tOr } from '../i18n.js';
import { can, state, subscribe, zonesLabel } from '../store.js';
import { $, act, checkedZones, confirmButton, el, toast, zoneChecks } from '../ui.js';

function validityText(p) {
  if (!p.valid_from && !p.valid_until) return t('pins.always');
  const from = p.valid_from ? t('pins.from', { when: fmtDay(p.valid_from) }) : '';
  const until = p.valid_until ? t('pins.until', { when: fmtDay(p.valid_until) }) : '';
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
  if (list.length === 0) body.append(el('tr', {}, el('td', { colspan: '8', class: 'muted' }, t('pins.none'))));
}

function pinRow(p) {
  const toggle = el('input', {
    type: 'checkbox', checked: p.enabled, testid: 'pin-toggle', 'aria-label': t('pins.toggle_label', { label: p.label }),
    onchange: async (e) => {
      const on = e.target.checked;
      const ok = await act(() => api('PATCH', `pins/${p.id}`, { enabled: on }), t(on ? 'pins.enabled_toast' : 'pins.disabled_toast', { label: p.label }));
      if (!ok) e.target.checked = !on; // refused (e.g. too many enabled PINs with the same last digits)
      loadPins();
    },
  });
  const status = !p.enabled ? t('pins.disabled') : p.valid_now ? t('pins.valid_now') : t('pins.not_valid_now');
  // A PIN being guessed is locked (even its right number is refused) until an operator unlocks or renumbers it.
  const locked = p.locked_until ? el('div', { class: 'small danger', testid: 'pin-locked' },
    t('pins.locked', { until: fmtTime(p.locked_until), count: p.recent_failures })) : null;
  const weak = p.weak ? el('div', { class: 'small muted', testid: 'pin-weak' }, t('pins.weak')) : null;
  const renumber = async () => {
    const r = await act(() => api('POST', `pins/${p.id}/rotate`), t('pins.renumbered', { label: p.label }));
    if (r && r.pin) showOnce(r.label, r.pin);
    loadPins();
  };
  return el('tr', { class: p.valid_now ? '' : 'inactive', testid: 'pin-row', 'data-pin-id': p.id, 'data-label': p.label },
    el('td', {}, el('strong', {}, p.label)),
    el('td', { class: 'num', testid: 'pin-hint' }, `••${p.pin_hint}`),
    el('td', { class: 'hide-phone' }, zonesLabel(p.zone_ids)),
    el('td', {}, el('span', { class: `prio prio-${p.priority}` }, tOr(`priority.${p.priority}`, p.priority)),
      p.language && p.language !== 'en'
        ? el('div', { class: 'muted small', testid: 'pin-language', lang: p.language }, LANGUAGES[p.language]?.name ?? p.language) : null),
    el('td', { class: 'hide-phone', testid: 'pin-validity' }, validityText(p), el('div', { class: 'muted small' }, status), locked, weak),
    el('td', { class: 'hide-phone', testid: 'pin-last-used' }, p.last_used_at ? fmtTime(p.last_used_at) : el('span', { class: 'muted' }, t('pins.never'))),
    el('td', {}, el('label', { class: 'inline' }, toggle)),
    el('td', {},
      p.locked_until ? el('button', { class: 'small', testid: 'pin-unlock',
        onclick: () => act(() => api('POST', `pins/${p.id}/unlock`), t('pins.unlocked', { label: p.label })).then(loadPins) }, t('pins.unlock')) : null,
      confirmButton(t('pins.new_number'), renumber, 'new number'),
      confirmButton(t('action.delete'), () => act(() => api('DELETE', `pins/${p.id}`), t('pins.deleted', { label: p.label })).then(loadPins), 'delete')));
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
      language: form.language.value,
    };
  } catch (err) {
    toast(err.message, 'error');
    return;
  }
  if (form.mode.value === 'typed') body.pin = form.pin.value.trim();
  const created = await act(() => api('POST', 'pins', body), (p) => t('pins.created', { label: p.label, hint: p.pin_hint }));
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
  // The telephone prompts' languages, each by its own name.
  form.language.replaceChildren(...Object.entries(LANGUAGES).map(([code, l]) => el('option', { value: code, lang: code }, l.name)));
  subscribe('language', () => {
    if (showing()) loadPins();
  });
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
