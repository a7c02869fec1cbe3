// Admin view: add a site (and its one-time enrolment command), users and their roles, settings (recordings'
// retention, the map's tile server). The zones' part is in zones.js.
import { api } from '../api.js';
import { can, mergeSite, ROLE_RANK, state, subscribe } from '../store.js';
import { $, act, confirmButton, el, toast } from '../ui.js';

async function addSite(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { name: form.name.value.trim(), label: form.label.value.trim(), lat: Number(form.lat.value), lon: Number(form.lon.value) };
  if (form.zone_id.value) body.zone_id = Number(form.zone_id.value);
  const result = await act(() => api('POST', 'sites', body), (r) => `Site ${r.site.name} added`);
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
      onchange: (e) => act(() => api('PATCH', `users/${u.id}`, { role: e.target.value }), `${u.username} is now ${e.target.value}`).then(loadUsers),
    }, ...Object.keys(ROLE_RANK).map((r) => el('option', { value: r, selected: r === u.role }, r)));
    const self = state.session.user && state.session.user.id === u.id;
    return el('tr', { testid: 'user-row', 'data-user': u.username },
      el('td', {}, u.username, self ? el('span', { class: 'muted' }, ' (you)') : null), el('td', {}, role),
      el('td', {}, self ? null : confirmButton('Delete', () => act(() => api('DELETE', `users/${u.id}`), `${u.username} deleted`).then(loadUsers))));
  }));
}

async function addUser(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = { username: form.username.value.trim(), password: form.password.value, role: form.role.value };
  if (await act(() => api('POST', 'users', body), `User ${body.username} added`)) {
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
  return settings;
}

async function saveSettings(ev) {
  ev.preventDefault();
  const days = Number(ev.target.retention_days.value);
  const body = { retention_days: days, tile_url: ev.target.tile_url.value.trim() };
  const saved = await act(() => api('PUT', 'settings', body), days ? `Recordings are kept ${days} days` : 'Settings saved');
  // The page's CSP names the tile host it was served with: a new one is allowed from the next page load.
  if (saved && saved.tile_url !== state.tiles) toast('The map tiles change when the console is reloaded', 'ok');
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
