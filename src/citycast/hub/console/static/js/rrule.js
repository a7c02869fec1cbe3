// Helpers that build and describe the RFC 5545 recurrence rules the hub's scheduler reads (with dateutil).
// No DOM, so the browser tests can call them directly; words in the user's language (js/i18n.js).
import { locale, t } from './i18n.js';

export const WEEKDAYS = Object.freeze([
  ['MO', 'Monday'], ['TU', 'Tuesday'], ['WE', 'Wednesday'], ['TH', 'Thursday'],
  ['FR', 'Friday'], ['SA', 'Saturday'], ['SU', 'Sunday'],
]);

const DAY_NAMES = Object.fromEntries(WEEKDAYS);
// 2024-01-01 was a Monday: the day names in the user's language come from Intl, not from a list of ours.
const DAY_INDEX = Object.freeze(Object.fromEntries(WEEKDAYS.map(([code], i) => [code, i])));

/** A weekday's name ("FR") in the user's language. */
export function dayName(code) {
  const date = new Date(Date.UTC(2024, 0, 1 + DAY_INDEX[code], 12));
  return new Intl.DateTimeFormat(locale(), { weekday: 'long', timeZone: 'UTC' }).format(date);
}

/** Parses "HH:MM" (24 h) into [hour, minute]; throws a clear error on anything else. */
export function parseTime(text) {
  const m = /^\s*(\d{1,2}):(\d{2})\s*$/.exec(String(text ?? ''));
  if (!m) throw new Error(t('rrule.bad_time', { text }));
  const hour = Number(m[1]);
  const minute = Number(m[2]);
  if (hour > 23 || minute > 59) throw new Error(t('rrule.no_such_time', { text }));
  return [hour, minute];
}

/** "every <weekday> at HH:MM" → FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0;BYSECOND=0 */
export function weeklyRule(day, time) {
  const code = String(day).toUpperCase();
  if (!(code in DAY_NAMES)) throw new Error(t('rrule.bad_day', { day }));
  const [hour, minute] = parseTime(time);
  return `FREQ=WEEKLY;BYDAY=${code};BYHOUR=${hour};BYMINUTE=${minute};BYSECOND=0`;
}

/** "every day at HH:MM" */
export function dailyRule(time) {
  const [hour, minute] = parseTime(time);
  return `FREQ=DAILY;BYHOUR=${hour};BYMINUTE=${minute};BYSECOND=0`;
}

/** Light check of a raw rule before the hub gets it: the hub (dateutil) has the last word. */
export function checkRawRule(text) {
  const rule = String(text ?? '').trim().replace(/^RRULE:/i, '');
  if (!rule) throw new Error(t('rrule.empty'));
  const parts = rule.split(';').filter(Boolean);
  const fields = {};
  for (const part of parts) {
    const [key, value] = part.split('=');
    if (!key || value === undefined || !/^[A-Z]+$/i.test(key)) throw new Error(t('rrule.bad_part', { part }));
    fields[key.toUpperCase()] = value;
  }
  if (!fields.FREQ) throw new Error(t('rrule.no_freq'));
  return parts.join(';').toUpperCase();
}

function pad(n) {
  return String(n).padStart(2, '0');
}

/** A short human description of the rules the helpers build; other rules are shown as they are. */
export function describeRule(rule) {
  const fields = {};
  for (const part of String(rule ?? '').replace(/^RRULE:/i, '').split(';')) {
    const [key, value] = part.split('=');
    if (key && value !== undefined) fields[key.toUpperCase()] = value.toUpperCase();
  }
  const simple = Object.keys(fields).every((k) => ['FREQ', 'BYDAY', 'BYHOUR', 'BYMINUTE', 'BYSECOND'].includes(k));
  const single = (v) => v !== undefined && /^\d+$/.test(v);
  if (!simple || !single(fields.BYHOUR) || !single(fields.BYMINUTE ?? '0')) return rule;
  const at = `${pad(fields.BYHOUR)}:${pad(fields.BYMINUTE ?? '0')}`;
  if (fields.FREQ === 'DAILY' && !fields.BYDAY) return t('rrule.daily', { at });
  if (fields.FREQ === 'WEEKLY' && fields.BYDAY) {
    const codes = fields.BYDAY.split(',');
    if (codes.every((d) => d in DAY_NAMES)) return t('rrule.weekly', { days: codes.map(dayName).join(t('list.sep')), at });
  }
  return rule;
}

/** Today's date in a time zone, "YYYY-MM-DD", for a schedule's dtstart (local time in that zone). */
export function todayIn(timeZone, now = new Date()) {
  const parts = new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' })
    .formatToParts(now);
  const get = (type) => parts.find((p) => p.type === type).value;
  return `${get('year')}-${get('month')}-${get('day')}`;
}
