// Schedule view: recurring addresses (RFC 5545 rules the hub's scheduler reads), with a live preview of the
// rule and each schedule's next runs.
import { api } from '../api.js';
import { fmtTime, lengthText } from '../format.js';
import { t, tOr } from '../i18n.js';
import { checkRawRule, dailyRule, dayName, describeRule, todayIn, WEEKDAYS, weeklyRule } from '../rrule.js';
import { state, subscribe, zonesLabel } from '../store.js';
import { $, act, checkedZones, confirmButton, el, fillSources, toast, zoneChecks } from '../ui.js';

function buildRule(form) {
  const repeat = form.repeat.value;
  if (repeat === 'weekly') return weeklyRule(form.weekday.value, form.time.value);
  if (repeat === 'daily') return dailyRule(form.time.value);
  return checkRawRule(form.raw.value);
}

function previewRule() {
  const form = $('#schedule-form');
  const preview = $('#rrule-preview');
  form.weekday.disabled = form.repeat.value !== 'weekly';
  form.raw.disabled = form.repeat.value !== 'raw';
  try {
    const rule = buildRule(form);
    preview.textContent = `${rule}  (${describeRule(rule)})`;
    preview.classList.remove('error');
  } catch (err) {
    preview.textContent = err.message;
    preview.classList.add('error');
  }
}

async function saveSchedule(ev) {
  ev.preventDefault();
  const form = ev.target;
  let rrule;
  try {
    rrule = buildRule(form);
  } catch (err) {
    toast(err.message, 'error');
    return;
  }
  const body = {
    title: form.title.value.trim(),
    rrule,
    dtstart: `${form.date.value}T${form.time.value}:00`,
    timezone: form.timezone.value.trim(),
    duration_s: Number(form.duration_s.value),
    source: form.source.value,
    zone_ids: checkedZones($('fieldset.zones', form)),
    priority: form.priority.value,
    enabled: form.enabled.checked,
  };
  const saved = await act(() => api('POST', 'schedules', body), (s) => t('schedule.saved', { title: s.title }));
  if (saved) {
    form.title.value = '';
    loadSchedules();
  }
}

async function loadSchedules() {
  const list = await act(() => api('GET', 'schedules'));
  if (!list) return;
  const ul = $('#schedule-list');
  ul.replaceChildren();
  if (list.length === 0) ul.append(el('li', { class: 'muted empty' }, t('schedule.none')));
  for (const s of list) {
    const runs = (s.next_runs || []).map((iso) => el('li', { testid: 'next-run', 'data-iso': iso }, fmtTime(iso, s.timezone)));
    const toggle = el('input', {
      type: 'checkbox', checked: s.enabled, testid: 'sched-toggle',
      onchange: (e) => act(() => api('PATCH', `schedules/${s.id}`, { enabled: e.target.checked }),
        t(e.target.checked ? 'schedule.enabled_toast' : 'schedule.disabled_toast', { title: s.title })).then(loadSchedules),
    });
    ul.append(el('li', { class: `schedule ${s.enabled ? '' : 'disabled'}`, testid: 'schedule-item', 'data-schedule-id': s.id },
      el('div', { class: 'onair-head' }, el('strong', {}, s.title),
        el('span', { class: `prio prio-${s.priority}` }, tOr(`priority.${s.priority}`, s.priority))),
      el('div', { class: 'muted small' }, t('schedule.line', {
        rule: describeRule(s.rrule), zone: s.timezone, length: lengthText(s.duration_s), source: s.source, zones: zonesLabel(s.zone_ids),
      })),
      el('div', { class: 'small' }, s.enabled ? `${t('schedule.next')} ` : `${t('schedule.would_run')} `, el('ol', { class: 'runs' }, runs)),
      el('div', { class: 'needs-operator row' },
        el('label', { class: 'inline' }, toggle, ` ${t('schedule.enabled')}`),
        confirmButton(t('action.delete'),
          () => act(() => api('DELETE', `schedules/${s.id}`), t('schedule.deleted', { title: s.title })).then(loadSchedules), 'delete'))));
  }
}

export function mountSchedule() {
  const form = $('#schedule-form');
  form.addEventListener('submit', saveSchedule);
  form.addEventListener('input', previewRule);
  const weekdays = () => {
    const chosen = form.weekday.value || 'FR';
    form.weekday.replaceChildren(...WEEKDAYS.map(([code]) => el('option', { value: code }, dayName(code))));
    form.weekday.value = chosen;
  };
  weekdays();
  subscribe('language', weekdays);
  form.date.value = todayIn('Asia/Karachi');
  subscribe('zones', () => zoneChecks($('fieldset.zones', form), 'sched'));
  subscribe('sources', () => fillSources(form.source));
  subscribe('route', () => {
    if (state.route !== 'schedule' || !state.session.user) return;
    previewRule();
    loadSchedules();
  });
}
