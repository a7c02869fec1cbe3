// Recordings view: every address as recorded (Ogg Opus), to play in the page or download.
import { api } from '../api.js';
import { fmtBytes, fmtDuration, fmtTime } from '../format.js';
import { fmtId, t } from '../i18n.js';
import { state, subscribe } from '../store.js';
import { $, act, el } from '../ui.js';

function playRecording(r) {
  const player = $('#player');
  $('#player-title').textContent = `${r.title || t('recordings.one')} · ${fmtTime(r.started_at)}`;
  player.src = `api/recordings/${r.id}/audio`;
  player.dataset.recordingId = String(r.id);
  player.play().catch(() => {}); // autoplay may be refused: the controls are there
}

async function loadRecordings() {
  const list = await act(() => api('GET', 'recordings'));
  if (!list) return;
  const body = $('#recordings-body');
  body.replaceChildren(...list.map((r) => el('tr', { testid: 'recording-row', 'data-recording-id': r.id },
    el('td', {}, fmtTime(r.started_at)), el('td', {}, r.title || t('recordings.address', { id: r.address_id ?? '' })),
    el('td', {}, fmtId(r.channel)),
    el('td', {}, r.ended_at ? fmtDuration(r.duration_s) : t('recordings.still', { length: fmtDuration(r.duration_s) })),
    el('td', {}, fmtBytes(r.bytes)),
    el('td', { class: 'actions' },
      el('button', { class: 'small', testid: 'recording-play', onclick: () => playRecording(r) }, `▶ ${t('recordings.play')}`),
      el('a', { href: `api/recordings/${r.id}/audio?download=1`, download: '', testid: 'recording-download' }, t('recordings.download'))))));
  if (list.length === 0) body.append(el('tr', {}, el('td', { colspan: '6', class: 'muted' }, t('recordings.none'))));
}

export function mountRecordings() {
  subscribe('route', () => {
    if (state.route === 'recordings' && state.session.user) loadRecordings();
  });
}
