// Alerts view: raised and cleared alerts, newest first (the tab's badge counts the active ones); a critical
// alert also pops up a notice.
import { api } from '../api.js';
import { fmtTime } from '../format.js';
import { fmtNumber, t, tOr } from '../i18n.js';
import { state, subscribe, upsertAlert } from '../store.js';
import { $, act, el, toast } from '../ui.js';

const CRITICAL_BATCH_MS = 1000;

/** "site: " for a site's alert; nothing for one about the hub itself (a pin_abuse alert names its caller). */
function alertSubject(alert) {
  return alert.site ? `${alert.site}: ` : '';
}

function render() {
  const activeOnly = $('#alerts-active-only').checked;
  const shown = state.alerts.filter((a) => !activeOnly || !a.cleared_at);
  const ul = $('#alert-list');
  ul.replaceChildren();
  if (shown.length === 0) ul.append(el('li', { class: 'muted empty' }, t('alerts.none')));
  for (const a of shown.slice(0, 200)) {
    ul.append(el('li', { class: `alert sev-${a.severity} ${a.cleared_at ? 'cleared' : ''}`, testid: 'alert-item', 'data-severity': a.severity, 'data-kind': a.kind },
      el('span', { class: 'sev' }, tOr(`severity.${a.severity}`, a.severity)),
      el('span', { class: 'when' }, fmtTime(a.raised_at)),
      a.site ? el('strong', {}, a.site) : el('strong', { class: 'muted' }, a.kind === 'pin_abuse' ? t('alerts.telephone') : t('alerts.hub')),
      el('span', { class: 'kind' }, tOr(`alert_kind.${a.kind}`, a.kind)),
      el('span', { class: 'msg' }, a.message),
      a.cleared_at ? el('span', { class: 'muted small' }, t('alerts.cleared', { when: fmtTime(a.cleared_at) })) : null));
  }
  const active = state.alerts.filter((a) => !a.cleared_at).length;
  const badge = $('#alert-badge');
  badge.hidden = active === 0;
  badge.textContent = fmtNumber(active);
}

async function loadAlerts() {
  const list = await act(() => api('GET', 'alerts'));
  if (!list) return;
  for (const a of list) upsertAlert(a);
  state.alerts.sort((a, b) => String(b.raised_at).localeCompare(String(a.raised_at)));
  render();
}

export function mountAlerts() {
  let queued = false;
  let criticalPending = [];

  /** A critical alert pops up a notice; a burst of them (a district losing power) makes one notice, not hundreds. */
  function announceCritical(alert) {
    criticalPending.push(alert);
    if (criticalPending.length > 1) return;
    setTimeout(() => {
      const batch = criticalPending;
      criticalPending = [];
      toast(batch.length === 1 ? alertSubject(batch[0]) + batch[0].message : t('alerts.critical_many', { count: batch.length }), 'error');
    }, CRITICAL_BATCH_MS);
  }

  $('#alerts-active-only').addEventListener('change', render);
  subscribe('language', render);
  // One redraw per frame, however many alerts arrive in between.
  subscribe('alerts', (alert) => {
    if (alert && !alert.cleared_at && alert.severity === 'critical') announceCritical(alert);
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      render();
    });
  });
  subscribe('route', () => {
    if (state.route === 'alerts' && state.session.user) loadAlerts();
  });
}
