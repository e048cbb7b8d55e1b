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
