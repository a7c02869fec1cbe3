// Formatting of times, lengths, sizes and levels for display. Pure functions: no DOM, no state.

export const STATE_COLORS = Object.freeze({
  playing: '#16a34a',
  idle: '#3b82f6',
  fallback: '#f59e0b',
  offline: '#4b5563',
  fault: '#dc2626',
  muted: '#9333ea',
});
export const STATES = Object.freeze(Object.keys(STATE_COLORS));

export function fmtTime(iso, timeZone) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    timeZone,
    weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit',
  });
}

/** A validity bound: with its year, as a PIN may be given for years ahead (fmtTime leaves the year out). */
export function fmtDay(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit' });
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
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600} h`;
  if (s >= 60 && s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function fmtMs(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(2)} ms` : '–';
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
  if (Number.isNaN(d.getTime())) throw new Error(`not a time: ${value}`);
  return d.toISOString();
}
