// Who is signed in, from where, using which desktops (reading only: ending a session is
// the security administrator's).
import { api, el, emptyRow, fail, label, row, t, when } from "./util.js";

const rows = document.getElementById("session-rows");

export async function load() {
  const r = await api("GET", "/api/admin/sessions");
  if (r.status !== 200) { emptyRow(rows, 6, fail(r)); return; }
  rows.replaceChildren(...r.data.sessions.map((s) => row(
    el("span", {}, el("strong", { text: s.name }), ` (${s.username})`),
    s.roles.map(label).join(", ") || t("Staff"), s.source, when(s.since), when(s.last_seen), s.desktops.join(", ") || "-")));
  if (!r.data.sessions.length) emptyRow(rows, 6, t("Nobody is signed in."));
}
