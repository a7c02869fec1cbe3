// The telephone's line under the On air view: where speakers call, who is on, and whether the public number
// (the trunk registration) works.
import { api } from '../api.js';
import { t } from '../i18n.js';
import { $, act, el } from '../ui.js';

export async function loadTelephone() {
  const tel = await act(() => api('GET', 'telephone'));
  const node = $('#telephone-status');
  if (!tel) return;
  if (!tel.enabled) {
    node.replaceChildren(el('span', { class: 'muted' }, t('telephone.off')));
    return;
  }
  const parts = [el('strong', {}, `${t('telephone.title')} `),
    `sip:${tel.sip} · ${t('telephone.calls', { count: tel.calls })}, ${t('telephone.on_air', { count: tel.live })}`];
  const r = tel.registration;
  if (r) {
    const ok = r.status === 'registered';
    parts.push(` · ${t('telephone.trunk')} `, el('span', { class: ok ? 'trunk-ok' : 'error', testid: 'trunk-status', 'data-status': r.status },
      ok ? t('telephone.registered', { aor: r.aor }) : `${r.aor} ${r.status}${r.error ? `: ${r.error}` : ''}`));
  }
  node.replaceChildren(...parts);
}
