// The telephone's line under the On air view: where speakers call, who is on, and whether the public number
// (the trunk registration) works.
import { api } from '../api.js';
import { $, act, el } from '../ui.js';

export async function loadTelephone() {
  const t = await act(() => api('GET', 'telephone'));
  const node = $('#telephone-status');
  if (!t) return;
  if (!t.enabled) {
    node.replaceChildren(el('span', { class: 'muted' }, 'Telephone off (the hub runs without --sip).'));
    return;
  }
  const parts = [el('strong', {}, 'Telephone '), `sip:${t.sip} · ${t.calls} call${t.calls === 1 ? '' : 's'}, ${t.live} on air`];
  const r = t.registration;
  if (r) {
    const ok = r.status === 'registered';
    parts.push(' · trunk ', el('span', { class: ok ? 'trunk-ok' : 'error', testid: 'trunk-status', 'data-status': r.status },
      ok ? `${r.aor} registered` : `${r.aor} ${r.status}${r.error ? `: ${r.error}` : ''}`));
  }
  node.replaceChildren(...parts);
}
