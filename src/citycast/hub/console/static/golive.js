// The "Go live" page: the speaker's microphone over WebRTC into the hub. Plain JS, no libraries.
// The level the speaker can trust is the hub's (what actually goes on air); the local meter only shows the mic works.

const $ = (id) => document.getElementById(id);
const state = { pc: null, stream: null, audioCtx: null, poll: null, meterRaf: null };

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { "Content-Type": "application/json" }, ...options };
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
    $("who").textContent = `logged in as ${user.username} (${user.role})`;
    $("login").classList.add("hidden");
    $("speak").classList.remove("hidden");
    startPolling();
  } catch (e) {
    $("who").textContent = "not logged in";
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
    say(`Log-in refused: ${e.message}`, true);
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
  if (!/^[0-9]{4,12}$/.test(pin)) { say("Enter your speaker PIN (4 to 12 digits).", true); return; }
  $("go").disabled = true;
  say("Opening the microphone…");
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
      if (pc.connectionState === "failed") { say("The connection to the hub failed.", true); hangUp(); }
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceComplete(pc);
    say("Checking your PIN…");
    const answer = await api("/api/golive/offer", {
      method: "POST",
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", pin, title: $("title").value.trim() || null }),
    });
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    $("stop").disabled = false;
    $("pin").value = "";
    say(`${answer.message}. Speak now.`);
  } catch (e) {
    hangUp();
    if (e.status === 403) say(`Refused: ${e.message}`, true);
    else if (e.status === 429) say(`Refused: ${e.message}`, true);
    else if (e.name === "NotAllowedError") say("The browser did not allow the microphone.", true);
    else say(`Could not go live: ${e.message}`, true);
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
    say("You are off air.");
  } catch (e) {
    say(`Stop: ${e.message}`, true);
  }
  hangUp();
  $("go").disabled = false;
}

function showStatus(s) {
  const onair = $("onair");
  onair.textContent = s.on_air ? "ON AIR" : s.live ? "live, no audio" : "off air";
  onair.className = s.on_air ? "live" : "";
  $("servermeter").style.width = s.live ? `${dbToPercent(s.level_dbfs)}%` : "0";
  $("serverinfo").textContent = s.live
    ? `Address ${s.address_id} · ${s.sites_reached} site(s) · ${s.level_dbfs.toFixed(1)} dBFS on air`
    : s.ended_reason ? `Ended: ${s.ended_reason}` : "—";
  if (!s.live && state.pc && !$("stop").disabled) {
    // The hub ended it (an operator, a hang-up it saw first): stop sending.
    hangUp();
    $("stop").disabled = true;
    $("go").disabled = false;
    say(`Off air: ${s.ended_reason || "ended by the hub"}`, true);
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
checkLogin();
