// Shared by the pages: translated strings, the CSRF-carrying fetch, sign-out.
export const strings = JSON.parse(document.body.dataset.strings || "{}");
export const t = (s) => strings[s] || s;

export async function api(method, path, body, csrf) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  return { status: response.status, data };
}

export async function session() {
  const r = await api("GET", "/api/session");
  return r.status === 200 ? r.data : null;
}

export function wireLogout() {
  const button = document.getElementById("logout");
  if (!button) return;
  button.addEventListener("click", async () => {
    const s = await session();
    if (s) await api("DELETE", "/api/session", undefined, s.csrf);
    window.location.href = "/";
  });
}

// Why the idle policy took a desktop back, in the clerk's language and local time.
const NOTICE_ACTIONS = {
  disconnect: "Your desktop was disconnected at {time}.",
  log_off: "Your desktop was logged off at {time} and reset for the next clerk.",
  shut_down: "Your desktop was shut down at {time}. Your files are kept; connecting starts it again.",
  suspend: "Your desktop was suspended at {time}. Connecting resumes it where you left it.",
};
const NOTICE_CAUSES = {
  idle: "Reason: no keyboard or mouse input for {duration}.",
  disconnected: "Reason: it stayed disconnected for {duration}.",
};

export function fill(text, values) {
  return text.replace(/\{(\w+)\}/g, (m, key) => (key in values ? String(values[key]) : m));
}

function duration(seconds) {
  return seconds >= 60 ? fill(t("{n} min"), { n: Math.floor(seconds / 60) })
    : fill(t("{n} s"), { n: Math.max(0, Math.round(seconds)) });
}

export function noticeText(notice) {
  const lang = document.documentElement.lang || "zh-CN";
  const time = new Date(notice.at).toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
  const action = NOTICE_ACTIONS[notice.action] || NOTICE_ACTIONS.disconnect;
  const cause = NOTICE_CAUSES[notice.cause] || NOTICE_CAUSES.idle;
  return `${fill(t(action), { time })} ${fill(t(cause), { duration: duration(notice.seconds) })}`;
}
