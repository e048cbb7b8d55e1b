// The desktop page: ask the broker for a console token, then let noVNC speak RFB
// through the broker's websocket tunnel. After a network blip it reconnects to the
// same desktop with a fresh token. While connected it asks for the desktop's status:
// an idle warning is shown with a countdown and an "I'm still here" button; when the
// idle policy took the desktop back, the page says why and does not reconnect by itself;
// nor when the helpdesk disconnected the clerk. While the helpdesk views the desktop
// (read-only), the page says who, at its top.
import RFB from "@novnc/novnc";
import { api, fill, noticeText, t, wireLogout } from "./common.js";

wireLogout();
const pool = document.body.dataset.pool;
const csrf = document.body.dataset.csrf;
const screen = document.getElementById("screen");
const status = document.getElementById("status");
const reconnectButton = document.getElementById("reconnect");
const logoffButton = document.getElementById("logoff");
const idleBox = document.getElementById("idle-warning");
const idleText = document.getElementById("idle-text");
const idleCountdown = document.getElementById("idle-countdown");
const stillHereButton = document.getElementById("still-here");
const noticeBox = document.getElementById("notice");
const viewingBox = document.getElementById("viewing");
const messageBox = document.getElementById("helpdesk-message");
const messageFrom = document.getElementById("helpdesk-from");
const messageText = document.getElementById("helpdesk-text");
const messageOk = document.getElementById("helpdesk-ok");
let messageId = null; // the helpdesk's message shown, until the clerk says OK
const STATUS_EVERY_MS = 5000;
let statusTimer = null;
let countdownTimer = null;
let deadline = null; // the idle action's time, in this browser's clock
let loggingOff = false;
const timings = (window.vdiTimings = { loginClick: Number(sessionStorage.getItem("vdiLoginClick")) || null });
let rfb = null;
let retries = 0;
const MAX_RETRIES = 30; // about two minutes of network trouble before giving up
const backoff = () => Math.min(1000 * retries, 5000);

function show(text, busy) {
  status.textContent = text;
  status.classList.toggle("busy", !!busy);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const poolPath = `/api/pools/${encodeURIComponent(pool)}`;

// -- the idle policy ------------------------------------------------------------------

async function readStatus() {
  let r;
  try { r = await api("GET", `${poolPath}/status`); } catch (e) { return null; }
  if (r.status === 401) { window.location.href = "/"; return null; }
  return r.status === 200 ? r.data : null;
}

function tick() {
  const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  idleCountdown.textContent = fill(t("Time left: {time}"), { time: `${minutes}:${seconds}` });
}

function showWarning(warning, serverNow) {
  // the broker's clock decides; count down in ours, corrected by the difference
  const skew = Date.parse(serverNow) - Date.now();
  deadline = Date.parse(warning.deadline) - skew;
  idleText.textContent = t("No keyboard or mouse input for a while. Your desktop will be taken back when the time runs out.");
  tick();
  if (idleBox.hidden) {
    idleBox.hidden = false;
    stillHereButton.focus();
  }
  if (!countdownTimer) countdownTimer = setInterval(tick, 1000);
}

function hideWarning() {
  idleBox.hidden = true;
  deadline = null;
  if (countdownTimer) { clearInterval(countdownTimer); countdownTimer = null; }
}

async function pollStatus() {
  const st = await readStatus();
  if (!statusTimer) return; // the console closed while asking: nothing to warn about
  if (st && st.warning) showWarning(st.warning, st.now); else if (st) hideWarning();
  if (st && st.message && st.message.id !== messageId) showMessage(st.message);
  if (st) showViewers(st.viewers || []);
}

// -- the helpdesk viewing the desktop (read-only) ----------------------------------------

function showViewers(viewers) {
  const names = viewers.map((v) => v.name).join(t(", "));
  viewingBox.textContent = names ? fill(t("Helpdesk {name} is viewing your desktop"), { name: names }) : "";
  viewingBox.hidden = !names;
}

// -- a message from the helpdesk ------------------------------------------------------

function showMessage(message) {
  messageId = message.id;
  messageFrom.textContent = fill(t("Message from the helpdesk ({name}):"), { name: message.from });
  messageText.textContent = message.text; // text, never markup
  messageBox.hidden = false;
  messageOk.focus();
}

messageOk.addEventListener("click", async () => {
  messageBox.hidden = true;
  const id = messageId;
  await api("POST", `${poolPath}/messages/${encodeURIComponent(id)}/seen`, {}, csrf);
  if (rfb) rfb.focus();
});

function watchStatus(on) {
  if (statusTimer) { clearInterval(statusTimer); statusTimer = null; }
  if (!on) showViewers([]); // said again by the next status, once connected
  if (on) { statusTimer = setInterval(pollStatus, STATUS_EVERY_MS); pollStatus(); }
}

stillHereButton.addEventListener("click", async () => {
  hideWarning(); // the answer counts as input; the policy withdraws the warning
  const r = await api("POST", `${poolPath}/still-here`, {}, csrf);
  if (rfb) rfb.focus();
  if (r.status !== 200) show((r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk."), false);
});

// After the console closed: was it the idle policy, or the helpdesk? Then say so and let
// the clerk choose when to connect again.
async function whyClosed() {
  const st = await readStatus();
  if (st && st.disconnected) {
    return fill(t("The helpdesk ({name}) disconnected you from your desktop. It is still running: press Reconnect to go on."),
      { name: st.disconnected.by });
  }
  return st && st.notice ? noticeText(st.notice) : null;
}

async function requestConsole() {
  // 3 minutes for a desktop being prepared or started again; a clerk in the pool's queue
  // (told their place) waits as long as it takes, up to a working day
  for (let attempt = 0, queued = 0; attempt < 120 && queued < 20000; attempt++) {
    const r = await api("POST", `/api/pools/${encodeURIComponent(pool)}/connect`, {}, csrf);
    if (r.status === 200) return r.data;
    if (r.status === 401) { window.location.href = "/"; return null; }
    const waiting = r.data && (r.data.error === "desktop_starting" ||
                               (r.data.error === "pool_full" && r.data.place));
    if (waiting) {
      show(r.data.message, true);
      if (r.data.place) { queued++; attempt--; }
      await sleep(1500);
      continue;
    }
    throw new Error((r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk."));
  }
  throw new Error(t("Something went wrong. Try again or call the helpdesk."));
}

async function connect() {
  reconnectButton.hidden = true;
  show(t("Connecting to your desktop…"), true);
  let grant;
  try {
    grant = await requestConsole();
  } catch (e) {
    // fetch() throws TypeError when the network is down: keep trying for a while.
    if (e instanceof TypeError && retries < MAX_RETRIES) {
      retries += 1;
      show(t("Disconnected. Reconnecting…"), true);
      await sleep(backoff());
      return connect();
    }
    show(e.message, false);
    reconnectButton.hidden = false;
    return;
  }
  if (!grant) return;
  timings.token = Date.now();
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${window.location.host}${grant.console}`;
  rfb = new RFB(screen, url, { wsProtocols: ["binary"], shared: true });
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  rfb.addEventListener("connect", () => {
    retries = 0;
    noticeBox.hidden = true;
    watchStatus(true);
    timings.connected = Date.now();
    screen.dataset.desktop = grant.desktop;
    show(t("Connected"), false);
    setTimeout(() => { if (status.textContent === t("Connected")) show("", false); }, 2500);
    rfb.focus();
  });
  rfb.addEventListener("disconnect", async (event) => {
    rfb = null;
    watchStatus(false);
    hideWarning();
    if (loggingOff) return;
    const why = await whyClosed();
    if (why) {
      noticeBox.textContent = why;
      noticeBox.hidden = false;
      show("", false);
      reconnectButton.hidden = false;
      return;
    }
    if (retries < MAX_RETRIES) {
      retries += 1;
      show(t("Disconnected. Reconnecting…"), true);
      await sleep(backoff());
      connect();
    } else {
      show(t("The connection to the desktop was lost."), false);
      reconnectButton.hidden = false;
    }
  });
}

reconnectButton.addEventListener("click", () => { retries = 0; noticeBox.hidden = true; connect(); });
logoffButton.addEventListener("click", async () => {
  const question = document.body.dataset.kind === "dedicated"
    ? t("Log off now? Your desktop and its files stay as they are for next time.")
    : t("Log off now? The desktop is reset for the next clerk: unsaved work is lost.");
  if (!window.confirm(question)) return;
  loggingOff = true;
  show(t("Logging off…"), true);
  const r = await api("POST", `/api/pools/${encodeURIComponent(pool)}/logoff`, {}, csrf);
  if (r.status === 200 || r.status === 404) { window.location.href = "/"; return; }
  loggingOff = false;
  show((r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk."), false);
});
connect();
