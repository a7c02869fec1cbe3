// The console's languages: message catalogues (i18n/<language>.json, one flat object of key → text), the
// browser's Intl for plural rules, numbers and dates, and the page's direction (Urdu is right-to-left).
//
// In the page, an element carries `data-i18n="key"` (its first text is translated: the inputs and badges inside it
// stay) and `data-i18n-placeholder` / `data-i18n-title` / `data-i18n-aria-label` for those attributes. In code,
// `t('key', {name: …})`. A text may be plural: {"one": "…", "other": "…"} chosen by Intl.PluralRules on `count`.
// A key missing in a language falls back to English, then to the key itself (and is logged once).
import { notify, state } from './store.js';

export const LANGUAGES = Object.freeze({
  en: Object.freeze({ name: 'English', dir: 'ltr', locale: 'en-GB' }),
  ur: Object.freeze({ name: 'اردو', dir: 'rtl', locale: 'ur-PK' }),
});
export const DEFAULT_LANGUAGE = 'en';
export const DEFAULT_TIME_ZONE = 'Asia/Karachi';
const ATTRIBUTES = Object.freeze(['placeholder', 'title', 'aria-label']);
const LAST_LANGUAGE = 'citycast.language'; // the sign-in page's language before anyone is signed in

export function isLanguage(lang) {
  return Object.prototype.hasOwnProperty.call(LANGUAGES, lang);
}

export function language() {
  return state.i18n.lang;
}

export function locale() {
  return LANGUAGES[state.i18n.lang].locale;
}

export function timeZone() {
  return state.i18n.timeZone || DEFAULT_TIME_ZONE;
}

async function fetchCatalogue(lang) {
  const res = await fetch(new URL(`../i18n/${lang}.json`, import.meta.url));
  if (!res.ok) throw new Error(`catalogue ${lang}: HTTP ${res.status}`);
  return res.json();
}

function pick(value, params) {
  if (value === null || typeof value !== 'object') return value;
  const count = Number(params && params.count);
  const form = new Intl.PluralRules(locale()).select(Number.isFinite(count) ? count : 0);
  return value[form] ?? value.other;
}

function format(text, params) {
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (whole, name) => {
    if (!(name in params)) return whole;
    const v = params[name];
    return typeof v === 'number' ? fmtNumber(v) : String(v ?? '');
  });
}

/** The message `key` in the user's language, its {placeholders} filled from `params` (numbers in the locale). */
export function t(key, params) {
  const { messages, fallback, missing } = state.i18n;
  let value = messages[key];
  if (value === undefined) value = fallback[key];
  if (value === undefined) {
    if (!missing.has(key)) {
      missing.add(key);
      console.warn(`i18n: no message ${key}`);
    }
    return key;
  }
  return format(String(pick(value, params)), params);
}

/** A message with a fallback for keys made from data (a state, a priority, an alert kind): the data itself. */
export function tOr(key, otherwise, params) {
  const { messages, fallback } = state.i18n;
  return messages[key] !== undefined || fallback[key] !== undefined ? t(key, params) : otherwise;
}

export function fmtNumber(n, options) {
  return typeof n === 'number' && Number.isFinite(n) ? new Intl.NumberFormat(locale(), options).format(n) : '';
}

/** A number that names something (a channel, an address): the locale's digits, never grouped ("1001"). */
export function fmtId(n) {
  return fmtNumber(n, { useGrouping: false });
}

/** A figure with `digits` decimals, in the locale's digits and separators. */
export function fmtFixed(n, digits) {
  return fmtNumber(n, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function translateText(node, text) {
  // The element's first text of its own: the inputs, badges and icons inside it stay as they are.
  const own = [...node.childNodes].find((c) => c.nodeType === Node.TEXT_NODE && c.textContent.trim());
  if (!own || node.childElementCount === 0) {
    if (node.childElementCount === 0) node.textContent = text;
    else node.prepend(document.createTextNode(text));
    return;
  }
  const lead = own.textContent.match(/^\s*/)[0];
  const tail = own.textContent.match(/\s*$/)[0];
  own.textContent = lead + text + tail;
}

/** Translates the page's marked elements (under `root`). */
export function translatePage(root = document) {
  for (const node of root.querySelectorAll('[data-i18n]')) translateText(node, t(node.dataset.i18n));
  for (const attr of ATTRIBUTES) {
    for (const node of root.querySelectorAll(`[data-i18n-${attr}]`)) node.setAttribute(attr, t(node.getAttribute(`data-i18n-${attr}`)));
  }
  const html = document.documentElement;
  html.lang = state.i18n.lang;
  html.dir = LANGUAGES[state.i18n.lang].dir;
}

/** The sign-in page's language: the last one used in this browser, else the browser's own, else English. */
export function preferredLanguage() {
  let last = null;
  try {
    last = localStorage.getItem(LAST_LANGUAGE);
  } catch {
    last = null; // storage refused (private mode): the browser's languages decide
  }
  if (isLanguage(last)) return last;
  for (const tag of navigator.languages || [navigator.language]) {
    const base = String(tag || '').toLowerCase().split('-')[0];
    if (isLanguage(base)) return base;
  }
  return DEFAULT_LANGUAGE;
}

/** Loads `lang`'s catalogue (and English beneath it), translates the page and tells the views (topic language). */
export async function setLanguage(lang) {
  const chosen = isLanguage(lang) ? lang : DEFAULT_LANGUAGE;
  if (!Object.keys(state.i18n.fallback).length) state.i18n.fallback = await fetchCatalogue(DEFAULT_LANGUAGE);
  state.i18n.messages = chosen === DEFAULT_LANGUAGE ? state.i18n.fallback : await fetchCatalogue(chosen);
  state.i18n.lang = chosen;
  try {
    localStorage.setItem(LAST_LANGUAGE, chosen);
  } catch {
    // not kept for the sign-in page: the user's setting on the hub still is
  }
  translatePage();
  notify('language');
  return chosen;
}

export function setTimeZone(zone) {
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone }); // throws on a zone this browser does not know
    state.i18n.timeZone = zone;
  } catch {
    state.i18n.timeZone = DEFAULT_TIME_ZONE;
  }
}
