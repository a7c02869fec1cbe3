// Formatting of times, lengths, sizes and levels for display, in the user's locale and the hub's time zone
// (js/i18n.js). No DOM.
import { fmtFixed, locale, t, timeZone } from './i18n.js';

export const STATE_COLORS = Object.freeze({
  playing: '#16a34a',
  idle: '#3b82f6',
  fallback: '#f59e0b',
  offline: '#4b5563',
  fault: '#dc2626',
  muted: '#9333ea',
});
export const STATES = Object.freeze(Object.keys(STATE_COLORS));

/** A time as the user reads it: their locale, in `zone` (a schedule's) or the hub's time zone. */
export function fmtTime(iso, zone) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(locale(), {
    timeZone: zone || timeZone(),
    weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
  });
}

/** A validity bound: with its year, as a PIN may be given for years ahead (fmtTime leaves the year out). */
export function fmtDay(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(locale(), {
    timeZone: timeZone(), day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit',
  });
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '';
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

export function lengthText(s) {
  if (!Number.isFinite(s)) return '';
  if (s >= 3600 && s % 3600 === 0) return t('unit.h', { n: s / 3600 });
  if (s >= 60 && s % 60 === 0) return t('unit.min', { n: s / 60 });
  return t('unit.s', { n: s });
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${fmtFixed(n, 0)} B`;
  if (n < 1024 * 1024) return `${fmtFixed(n / 1024, 1)} KiB`;
  return `${fmtFixed(n / 1024 / 1024, 1)} MiB`;
}

export function fmtMs(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${fmtFixed(v, 2)} ms` : '–';
}

/** Loudness as 0..1 for the meters: -60 dBFS (or silence) is empty, 0 dBFS full. */
export function levelFraction(dbfs) {
  if (typeof dbfs !== 'number' || !Number.isFinite(dbfs)) return 0;
  return Math.min(1, Math.max(0, (dbfs + 60) / 60));
}

/** A datetime-local value (this browser's time) as an aware ISO time for the hub; null when left empty. */
export function localToIso(value) {
  if (!value) return null;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new Error(t('error.not_a_time', { value }));
  return d.toISOString();
}
