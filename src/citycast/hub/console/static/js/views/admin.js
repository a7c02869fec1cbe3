// Admin view: add a site (and its one-time enrolment command), users and their roles, settings (recordings'
// retention, the map's tile server). The zones' part is in zones.js.
import { api } from '../api.js';
import { setTimeZone, t, tOr, timeZone } from '../i18n.js';
import { can, mergeSite, ROLE_RANK, state, subscribe } from '../store.js';
import { $, act, confirmButton, el, toast } from '../ui.js';

async function addSite(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { name: form.name.value.trim(), label: form.label.value.trim(), lat: Number(form.lat.value), lon: Number(form.lon.value) };
  if (form.zone_id.value) body.zone_id = Number(form.zone_id.value);
  const result = await act(() => api('POST', 'sites', body), (r) => t('admin.site_added', { site: r.site.name }));
  if (result) {
    $('#enrol-command').textContent = result.enrol_command;
    $('#enrol-result').hidden = false;
    mergeSite(result.site);
  }
}

async function loadUsers() {
  const list = await act(() => api('GET', 'users'));
  if (!list) return;
  $('#users-body').replaceChildren(...list.map((u) => {
    const role = el('select', {
      testid: 'user-role-select',
      onchange: (e) => act(() => api('PATCH', `users/${u.id}`, { role: e.target.value }),
        t('admin.role_set', { user: u.username, role: tOr(`role.${e.target.value}`, e.target.value) })).then(loadUsers),
    }, ...Object.keys(ROLE_RANK).map((r) => el('option', { value: r, selected: r === u.role }, tOr(`role.${r}`, r))));
    const self = state.session.user && state.session.user.id === u.id;
    return el('tr', { testid: 'user-row', 'data-user': u.username },
      // translate="no": a name, not a word (for the browser's translators and the language tests alike).
      el('td', {}, el('span', { translate: 'no' }, u.username), self ? el('span', { class: 'muted' }, ` (${t('admin.you')})`) : null),
      el('td', {}, role),
      el('td', {}, self ? null : confirmButton(t('action.delete'),
        () => act(() => api('DELETE', `users/${u.id}`), t('admin.user_deleted', { user: u.username })).then(loadUsers), 'delete')));
  }));
}

async function addUser(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { username: form.username.value.trim(), password: form.password.value, role: form.role.value };
  if (await act(() => api('POST', 'users', body), t('admin.user_added', { user: body.username }))) {
    form.reset();
    loadUsers();
  }
}

async function loadSettings() {
  const settings = await act(() => api('GET', 'settings'));
  if (settings) {
    $('#settings-form').retention_days.value = settings.retention_days ?? '';
    $('#settings-form').tile_url.value = settings.tile_url || '';
  }
  $('#settings-form').time_zone.value = timeZone();
  return settings;
}

async function saveSettings(ev) {
  ev.preventDefault();
  const days = Number(ev.target.retention_days.value);
  const body = { retention_days: days, tile_url: ev.target.tile_url.value.trim() };
  const zone = ev.target.time_zone.value.trim();
  if (zone && zone !== timeZone()) {
    const where = await act(() => api('PUT', 'locale', { time_zone: zone }));
    if (where) setTimeZone(where.time_zone);
  }
  const saved = await act(() => api('PUT', 'settings', body), days ? t('admin.kept_days', { count: days }) : t('admin.saved'));
  // The page's CSP names the tile host it was served with: a new one is allowed from the next page load.
  if (saved && saved.tile_url !== state.tiles) toast(t('admin.tiles_reload'), 'ok');
}

export function mountAdmin() {
  $('#site-form').addEventListener('submit', addSite);
  $('#user-form').addEventListener('submit', addUser);
  $('#settings-form').addEventListener('submit', saveSettings);
  $('#enrol-copy').addEventListener('click', () => navigator.clipboard?.writeText($('#enrol-command').textContent));
  subscribe('route', () => {
    if (state.route !== 'admin' || !can('admin')) return;
    loadUsers();
    loadSettings();
  });
}
