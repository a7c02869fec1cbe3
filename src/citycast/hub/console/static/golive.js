// The "Go live" page: the speaker's microphone over WebRTC into the hub. Plain JS, no libraries.
// The level the speaker can trust is the hub's (what actually goes on air); the local meter only shows the mic works.
// Its words are the console's catalogues (js/i18n.js), in the signed-in user's language.
import { fmtFixed, fmtNumber, isLanguage, language, preferredLanguage, setLanguage, t } from "./js/i18n.js";

const $ = (id) => document.getElementById(id);
const state = { pc: null, stream: null, audioCtx: null, poll: null, meterRaf: null };

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", "Accept-Language": language() };
  const init = { credentials: "same-origin", headers, ...options };
  const r = await fetch(path, init);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const detail = body && body.detail ? body.detail : `${r.status} ${r.statusText}`;
    const err = new Error(detail);
    err.status = r.status;
    throw err;
  }
  return body;
}

function dbToPercent(db) {
  // -60 dBFS .. 0 dBFS onto 0..100 %
  return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
}

async function checkLogin() {
  try {
    const me = await api("/api/me");
    const user = me.user || me;
    if (isLanguage(user.language) && user.language !== language()) await setLanguage(user.language);
    $("who").textContent = t("golive.logged_in_as", { user: user.username, role: t(`role.${user.role}`) });
    $("login").classList.add("hidden");
    $("speak").classList.remove("hidden");
    startPolling();
  } catch (e) {
    $("who").textContent = t("golive.not_logged_in");
    $("login").classList.remove("hidden");
    $("speak").classList.add("hidden");
  }
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("/api/login", {
      method: "POST",
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    say("");
    await checkLogin();
  } catch (e) {
    say(t("golive.login_refused", { error: e.message }), true);
  }
});

function localMeter(stream) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  state.audioCtx = new Ctx();
  const src = state.audioCtx.createMediaStreamSource(stream);
  const analyser = state.audioCtx.createAnalyser();
  analyser.fftSize = 2048;
  src.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const draw = () => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    const rms = Math.sqrt(sum / buf.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -120;
    $("localmeter").style.width = `${dbToPercent(db)}%`;
    state.meterRaf = requestAnimationFrame(draw);
  };
  draw();
}

function iceComplete(pc, timeoutMs = 5000) {
  // No trickle: the hub answers one complete offer, so wait until every candidate is in it.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function goLive() {
  const pin = $("pin").value.trim();
  if (!/^[0-9]{4,12}$/.test(pin)) { say(t("golive.enter_pin"), true); return; }
  $("go").disabled = true;
  say(t("golive.opening_mic"));
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
      video: false,
    });
    localMeter(state.stream);
    const pc = new RTCPeerConnection({ iceServers: [] });  // loopback / LAN: no STUN
    state.pc = pc;
    for (const track of state.stream.getAudioTracks()) pc.addTransceiver(track, { direction: "sendonly" });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") { say(t("golive.connection_failed"), true); hangUp(); }
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceComplete(pc);
    say(t("golive.checking_pin"));
    const answer = await api("/api/golive/offer", {
      method: "POST",
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", pin, title: $("title").value.trim() || null }),
    });
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    $("stop").disabled = false;
    $("pin").value = "";
    say(t("golive.speak_now", { message: answer.message }));
  } catch (e) {
    hangUp();
    if (e.status === 403) say(t("golive.refused", { error: e.message }), true);
    else if (e.status === 429) say(t("golive.refused", { error: e.message }), true);
    else if (e.name === "NotAllowedError") say(t("golive.mic_refused"), true);
    else say(t("golive.failed", { error: e.message }), true);
    $("go").disabled = false;
  }
}

function hangUp() {
  if (state.pc) { state.pc.close(); state.pc = null; }
  if (state.stream) { state.stream.getTracks().forEach((t) => t.stop()); state.stream = null; }
  if (state.meterRaf) { cancelAnimationFrame(state.meterRaf); state.meterRaf = null; }
  if (state.audioCtx) { state.audioCtx.close(); state.audioCtx = null; }
  $("localmeter").style.width = "0";
}

async function stop() {
  $("stop").disabled = true;
  try {
    await api("/api/golive/stop", { method: "POST", body: "{}" });
    say(t("golive.off_air_now"));
  } catch (e) {
    say(t("golive.stop_failed", { error: e.message }), true);
  }
  hangUp();
  $("go").disabled = false;
}

function showStatus(s) {
  const onair = $("onair");
  onair.textContent = s.on_air ? t("golive.on_air_now") : s.live ? t("golive.live_no_audio") : t("golive.off_air");
  onair.className = s.on_air ? "live" : "";
  $("servermeter").style.width = s.live ? `${dbToPercent(s.level_dbfs)}%` : "0";
  $("serverinfo").textContent = s.live
    ? t("golive.info", { id: String(s.address_id), count: fmtNumber(s.sites_reached), level: fmtFixed(s.level_dbfs, 1) })
    : s.ended_reason ? t("golive.ended", { reason: s.ended_reason }) : "—";
  if (!s.live && state.pc && !$("stop").disabled) {
    // The hub ended it (an operator, a hang-up it saw first): stop sending.
    hangUp();
    $("stop").disabled = true;
    $("go").disabled = false;
    say(t("golive.ended_by_hub", { reason: s.ended_reason || t("golive.hub_ended") }), true);
  }
}

function startPolling() {
  if (state.poll) return;
  const tick = async () => {
    try { showStatus(await api("/api/golive/status")); } catch (e) { /* shown on the next success */ }
  };
  tick();
  state.poll = setInterval(tick, 500);
}

$("go").addEventListener("click", goLive);
$("stop").addEventListener("click", stop);
$("pin").addEventListener("keydown", (ev) => { if (ev.key === "Enter") goLive(); });
// The page's words first (this browser's last language), then the user's own once the hub says who they are.
setLanguage(preferredLanguage())
  .catch((err) => console.error("i18n: no catalogue", err))
  .finally(() => {
    $("who").textContent = t("golive.checking");
    checkLogin();
  });
