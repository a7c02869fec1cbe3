// Talkback: the hub listens to one site's microphone (mixed into a live caller's return audio). The Listen
// buttons (site rows, map popups) and the "listening to" indicator in the top bar.
import { api } from '../api.js';
import { t } from '../i18n.js';
import { setTalkbackState, state, subscribe } from '../store.js';
import { $, $$, act, el, headphonesIcon } from '../ui.js';

/** Draws a Listen button for its site (`data-site`) as the talkback state stands; returns the button. */
export function listenButton(button, stopText, site = button.dataset.site) {
  const listening = state.talkback.site === site;
  button.replaceChildren(headphonesIcon(), listening ? stopText : ` ${t('talkback.listen')}`);
  button.setAttribute('aria-pressed', listening ? 'true' : 'false');
  button.classList.toggle('on', listening);
  button.disabled = state.talkback.busy;
  return button;
}

/** Opens (or closes) talkback on one site. The hub listens to one site at a time: opening another closes the
 * first, so the console shows whatever site the hub answers with, not what was asked for. */
export async function setTalkback(site, on) {
  if (state.talkback.busy) return;
  setTalkbackState({ busy: true });
  let heard;
  try {
    const result = await act(() => api('POST', `sites/${site.id}/talkback`, { on }),
      (r) => (r.site ? t('talkback.listening_to', { site: r.site }) : t('talkback.stopped', { site: site.name })));
    if (result) heard = { site: result.site ?? null };
  } finally {
    setTalkbackState({ busy: false, ...heard });
  }
}

function render() {
  const indicator = $('#listening');
  const listening = state.talkback.site;
  indicator.hidden = !listening;
  indicator.dataset.site = listening || '';
  if (listening) {
    const site = state.sites.get(listening);
    indicator.replaceChildren(headphonesIcon(), ` ${t('talkback.indicator', { site: listening })}`,
      site ? el('button', { class: 'link', testid: 'listening-stop', onclick: () => setTalkback(site, false) }, t('talkback.stop_link')) : null);
  }
  // An open popup's button is changed in place: rebuilding the popup under the click that is being handled would
  // let the click fall through to the map, which closes the popup.
  for (const button of $$('[data-testid=popup-listen]')) listenButton(button, ` ${t('talkback.stop_listening')}`);
}

export function mountTalkback() {
  subscribe('talkback', render);
  subscribe('language', render);
}
