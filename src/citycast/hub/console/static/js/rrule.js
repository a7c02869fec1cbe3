// Helpers that build and describe the RFC 5545 recurrence rules the hub's scheduler reads (with dateutil).
// Pure functions: no DOM, so the browser tests can call them directly.

export const WEEKDAYS = Object.freeze([
  ['MO', 'Monday'], ['TU', 'Tuesday'], ['WE', 'Wednesday'], ['TH', 'Thursday'],
  ['FR', 'Friday'], ['SA', 'Saturday'], ['SU', 'Sunday'],
]);

const DAY_NAMES = Object.fromEntries(WEEKDAYS);

/** Parses "HH:MM" (24 h) into [hour, minute]; throws a clear error on anything else. */
export function parseTime(text) {
  const m = /^\s*(\d{1,2}):(\d{2})\s*$/.exec(String(text ?? ''));
  if (!m) throw new Error(`time must be HH:MM, got "${text}"`);
  const hour = Number(m[1]);
  const minute = Number(m[2]);
  if (hour > 23 || minute > 59) throw new Error(`no such time of day: "${text}"`);
  return [hour, minute];
}

/** "every <weekday> at HH:MM" → FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0;BYSECOND=0 */
export function weeklyRule(day, time) {
  const code = String(day).toUpperCase();
  if (!(code in DAY_NAMES)) throw new Error(`unknown weekday "${day}" (use MO..SU)`);
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
  if (!rule) throw new Error('the recurrence rule is empty');
  const parts = rule.split(';').filter(Boolean);
  const fields = {};
  for (const part of parts) {
    const [key, value] = part.split('=');
    if (!key || value === undefined || !/^[A-Z]+$/i.test(key)) throw new Error(`not a KEY=VALUE part: "${part}"`);
    fields[key.toUpperCase()] = value;
  }
  if (!fields.FREQ) throw new Error('the rule needs FREQ=… (e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=20)');
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
  if (fields.FREQ === 'DAILY' && !fields.BYDAY) return `every day at ${at}`;
  if (fields.FREQ === 'WEEKLY' && fields.BYDAY) {
    const days = fields.BYDAY.split(',').map((d) => DAY_NAMES[d]);
    if (days.every(Boolean)) return `every ${days.join(', ')} at ${at}`;
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
