// Playout delay card (in the On air view): per channel, the D its sites play with, the D the fleet's margins
// recommend, the fleet's worst margin second by second (a sparkline), and the "auto" switch (admins). With auto on
// the hub moves D itself; every site of the channel switches at the same sample (docs/protocol.md "Delay schedule").
import { api } from '../api.js';
import { fmtId, fmtNumber, t } from '../i18n.js';
import { can, state, subscribe } from '../store.js';
import { act, el } from '../ui.js';

const SVG = 'http://www.w3.org/2000/svg';
const POLL_MS = 2000;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// The worst margin over the last minute, 0 ms at the bottom: the line falling towards 0 is D about to be too short.
function sparkline(values, width = 160, height = 32) {
  const box = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'data-testid': 'delay-spark' });
  box.append(svg('line', { x1: 0, y1: height - 1, x2: width, y2: height - 1, stroke: 'currentColor', 'stroke-opacity': 0.3 }));
  if (values.length < 2) return box;
  const top = Math.max(...values, 1);
  const points = values.map((v, i) => {
    const x = (i / (values.length - 1)) * width;
    const y = height - 1 - (Math.max(v, 0) / top) * (height - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  box.append(svg('polyline', { points: points.join(' '), fill: 'none', stroke: 'currentColor', 'stroke-width': 1.5 }));
  return box;
}

const ms = (v) => (v === null || v === undefined ? '–' : `${fmtNumber(Math.round(v))} ms`);

// The card's state (its node, its poll timer) lives in mountDelay's closure: only the store holds module state.
export function mountDelay(after) {
  const card = el('div', { class: 'card', testid: 'delay-card' },
    el('h2', { 'data-i18n': 'delay.title' }, t('delay.title')),
    el('p', { class: 'muted small', 'data-i18n': 'delay.help' }, t('delay.help')),
    el('ul', { class: 'onair-list' }));
  let timer = null;

  async function toggle(row) {
    await act(() => api('PUT', 'settings/delay', { auto: !row.auto, channel: row.channel }),
      t(row.auto ? 'delay.auto_turned_off' : 'delay.auto_turned_on', { channel: fmtId(row.channel) }));
    load();
  }

  function render(data) {
    const rows = data.tuning || [];
    const body = rows.length === 0
      ? [el('li', { class: 'muted empty' }, t('delay.none'))]
      : rows.map((r) => el('li', { testid: 'delay-row', 'data-channel': r.channel },
        el('div', {},
          el('strong', {}, t('delay.channel', { channel: fmtId(r.channel) })), ' · D ', el('span', { testid: 'delay-now' }, ms(r.delay_ms)),
          r.target_delay_ms !== r.delay_ms ? ` → ${ms(r.target_delay_ms)}` : '',
          ` · ${t('delay.recommended')} `, el('span', { testid: 'delay-recommended' }, ms(r.recommended_ms)),
          ` · ${t('delay.worst_margin')} `, el('span', { testid: 'delay-margin' }, ms(r.margin_min_ms))),
        sparkline(r.margin_history_ms || []),
        can('admin')
          ? el('button', { class: 'small', testid: 'delay-auto', onclick: () => toggle(r) }, r.auto ? t('delay.auto_on') : t('delay.auto_off'))
          : el('span', { class: 'muted small' }, r.auto ? t('delay.auto') : t('delay.fixed'))));
    card.querySelector('ul').replaceChildren(...body);
  }

  async function load() {
    const data = await api('GET', 'settings/delay').catch(() => null);
    if (data) render(data);
  }

  function follow() {
    clearInterval(timer);
    timer = null;
    if (state.route === 'onair' && state.session.user) {
      load();
      timer = setInterval(load, POLL_MS);
    }
  }

  after.after(card);
  subscribe('route', follow);
}
