// DOM helpers shared by the views: element building, notices, confirm buttons, meters, zone pickers.
import { levelFraction } from './format.js';
import { fmtFixed, t, tOr } from './i18n.js';
import { state } from './store.js';

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

export function el(tag, attrs = {}, ...children) {
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

export function toast(message, kind = 'info') {
  const node = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: `toast-${kind}` }, message);
  $('#toasts').append(node);
  setTimeout(() => node.remove(), kind === 'error' ? 8000 : 4000);
}

/** Runs an API action from a button or form, reporting failure to the user instead of throwing. */
export async function act(fn, okMessage) {
  try {
    const result = await fn();
    if (okMessage) toast(typeof okMessage === 'function' ? okMessage(result) : okMessage, 'ok');
    return result;
  } catch (err) {
    toast(err.message || String(err), 'error');
    return undefined;
  }
}

/** A destructive button that asks for a second click instead of a blocking dialog. `id` names it for the tests
 * whatever the language ("delete": testid confirm-delete). */
export function confirmButton(label, fn, id = label.toLowerCase()) {
  const button = el('button', { class: 'danger small', testid: `confirm-${id}` }, label);
  let armed = null;
  button.addEventListener('click', () => {
    if (armed) {
      clearTimeout(armed);
      armed = null;
      button.textContent = label;
      fn();
      return;
    }
    button.textContent = t('action.sure');
    armed = setTimeout(() => { armed = null; button.textContent = label; }, 3000);
  });
  return button;
}

export function meter(dbfs, testid) {
  const node = el('span', { class: 'meter', testid }, el('span', { class: 'meter-fill' }));
  setMeter(node, dbfs);
  return node;
}

export function setMeter(node, dbfs) {
  node.firstChild.style.width = `${Math.round(levelFraction(dbfs) * 100)}%`;
  node.title = typeof dbfs === 'number' && Number.isFinite(dbfs) ? `${fmtFixed(dbfs, 1)} dBFS` : t('meter.none');
}

export function stateBadge(siteState) {
  return el('span', { class: `state state-${siteState}`, 'data-state': siteState },
    siteState ? tOr(`state.${siteState}`, siteState) : t('state.unknown'));
}

/** A headphones icon drawn inline: an emoji would show a missing-glyph box where no emoji font is installed. */
export function headphonesIcon() {
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

/** The "all zones" box and one box per zone, in a form's zone fieldset. */
export function zoneChecks(fieldset, prefix) {
  const legend = fieldset.querySelector('legend');
  fieldset.replaceChildren(legend);
  const all = el('input', { type: 'checkbox', name: 'all', checked: true, testid: `${prefix}-zone-all` });
  fieldset.append(el('label', { class: 'inline strong' }, all, ` ${t('zones.all')}`));
  for (const zone of state.zones) {
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

export function checkedZones(fieldset) {
  return $$('input[name=zone]:checked', fieldset).map((b) => Number(b.value));
}

export function fillSources(select) {
  const current = select.value;
  // The hub's own sources by their name in the user's language; a media file by its own name.
  select.replaceChildren(...state.sources.map((s) => el('option', { value: s.id }, tOr(`source.${s.id}`, s.label || s.id))));
  if (current && state.sources.some((s) => s.id === current)) select.value = current;
}
