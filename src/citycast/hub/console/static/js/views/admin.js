// Admin view: add a site (and its one-time enrolment command), users and their roles, settings (recordings'
// retention, the map's tile server, the Icecast server). The zones' part is in zones.js.
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

// A form's values are loaded when the view opens; what the admin types before that answer comes (a slow link) must
// not be overwritten by it. `edited` is set on input and cleared when a load starts or a save lands.
function markEdited(ev) {
  ev.currentTarget.dataset.edited = '1';
}

async function loadSettings() {
  const form = $('#settings-form');
  delete form.dataset.edited;
  const settings = await act(() => api('GET', 'settings'));
  if (form.dataset.edited) return settings;
  if (settings) {
    form.retention_days.value = settings.retention_days ?? '';
    form.tile_url.value = settings.tile_url || '';
  }
  form.time_zone.value = timeZone();
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
  if (saved) delete ev.target.dataset.edited;
  // The page's CSP names the tile host it was served with: a new one is allowed from the next page load.
  if (saved && saved.tile_url !== state.tiles) toast(t('admin.tiles_reload'), 'ok');
}

/** The URL as the admin typed it: the API gives the user apart (`source`, Icecast's default, is left out). */
function icecastUrl(st) {
  if (!st.url) return '';
  return st.user && st.user !== 'source' ? st.url.replace('http://', `http://${st.user}@`) : st.url;
}

function mountStatus(m) {
  if (m.connected) return t('icecast.connected', { mount: m.mount });
  if (m.error) return t('icecast.error', { mount: m.mount, error: m.error });
  return t('icecast.connecting', { mount: m.mount });
}

function icecastStatus(st) {
  if (!st.enabled) return [el('li', {}, t('icecast.off'))];
  if (!st.running) return [el('li', {}, t('icecast.not_running'))];
  if (!st.mounts.length) return [el('li', {}, t('icecast.no_mounts'))];
  return st.mounts.map((m) => el('li', { testid: 'icecast-mount', 'data-connected': String(m.connected) }, mountStatus(m)));
}

/** Shows the setting; the password field stays empty (the hub never gives it back): empty on save keeps it. */
function showIcecast(st) {
  const form = $('#icecast-form');
  form.url.value = icecastUrl(st);
  form.password.value = '';
  form.password.placeholder = st.password_set ? t('icecast.password_kept') : '';
  form.public.checked = st.public;
  $('#icecast-status').replaceChildren(...icecastStatus(st));
}

async function loadIcecast() {
  const form = $('#icecast-form');
  delete form.dataset.edited;
  const st = await act(() => api('GET', 'settings/icecast'));
  if (!st) return;
  if (form.dataset.edited) $('#icecast-status').replaceChildren(...icecastStatus(st));
  else showIcecast(st);
}

async function saveIcecast(ev) {
  ev.preventDefault();
  const form = ev.target;
  const url = form.url.value.trim();
  const body = { enabled: Boolean(url), url: url || null, public: form.public.checked };
  if (form.password.value) body.password = form.password.value; // left out: the hub keeps the one it has
  const saved = await act(() => api('PUT', 'settings/icecast', body), url ? t('icecast.saved') : t('icecast.stopped'));
  if (saved) {
    delete form.dataset.edited;
    showIcecast(saved);
  }
}

export function mountAdmin() {
  $('#site-form').addEventListener('submit', addSite);
  $('#user-form').addEventListener('submit', addUser);
  $('#settings-form').addEventListener('submit', saveSettings);
  $('#icecast-form').addEventListener('submit', saveIcecast);
  $('#settings-form').addEventListener('input', markEdited);
  $('#icecast-form').addEventListener('input', markEdited);
  $('#enrol-copy').addEventListener('click', () => navigator.clipboard?.writeText($('#enrol-command').textContent));
  subscribe('route', () => {
    if (state.route !== 'admin' || !can('admin')) return;
    loadUsers();
    loadSettings();
    loadIcecast();
  });
}
