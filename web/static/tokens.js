// API tokens: make one (its secret shown once, with a copy button), list and revoke
// one's own; the security administrator also sees and revokes everyone's.
import { api, fill, t, wireLogout } from "./common.js";

wireLogout();
const csrf = document.body.dataset.csrf;
const form = document.getElementById("create");
const message = document.getElementById("message");
const created = document.getElementById("created");
const secret = document.getElementById("secret");
const copied = document.getElementById("copied");
const everyone = document.getElementById("everyone");
const enc = encodeURIComponent;
const fail = (r) => (r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk.");
const when = (iso) => (iso ? new Date(iso).toLocaleString(document.documentElement.lang) : t("Never"));

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

function revokeButton(onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "revoke";
  b.textContent = t("Revoke");
  b.addEventListener("click", onClick);
  return b;
}

async function load() {
  const r = await api("GET", "/api/tokens");
  const rows = document.getElementById("tokens");
  rows.replaceChildren();
  if (r.status !== 200) { message.textContent = fail(r); return; }
  document.getElementById("none").hidden = r.data.tokens.length > 0;
  for (const tok of r.data.tokens) {
    const tr = document.createElement("tr");
    tr.dataset.token = tok.id;
    cell(tr, tok.name);
    cell(tr, tok.fingerprint).className = "fingerprint";
    cell(tr, when(tok.created_at));
    cell(tr, tok.state === "expired" ? `${when(tok.expires_at)} (${t("expired")})` : when(tok.expires_at));
    cell(tr, tok.last_used_at ? `${when(tok.last_used_at)} · ${tok.last_used_from}` : t("Never"));
    cell(tr, "").appendChild(revokeButton(async () => {
      if (!window.confirm(fill(t("Revoke the token {name}? What uses it stops at once."), { name: tok.name }))) return;
      const d = await api("DELETE", `/api/tokens/${enc(tok.id)}`, undefined, csrf);
      message.textContent = d.status === 200 ? "" : fail(d);
      await load();
    }));
    rows.appendChild(tr);
  }
  if (everyone) await loadEveryone();
}

async function loadEveryone() {
  const r = await api("GET", "/api/security/tokens");
  everyone.replaceChildren();
  if (r.status !== 200) return;
  for (const tok of r.data.tokens) {
    const tr = document.createElement("tr");
    cell(tr, `${tok.display_name} (${tok.username})`);
    cell(tr, tok.name);
    cell(tr, tok.fingerprint).className = "fingerprint";
    cell(tr, when(tok.expires_at));
    cell(tr, tok.last_used_at ? `${when(tok.last_used_at)} · ${tok.last_used_from}` : t("Never"));
    cell(tr, "").appendChild(revokeButton(async () => {
      const reason = window.prompt(t("Why revoke it? (it is recorded)"));
      if (reason === null) return;
      const d = await api("POST", `/api/security/tokens/${enc(tok.id)}/revoke`, { reason }, csrf);
      message.textContent = d.status === 200 ? "" : fail(d);
      await load();
    }));
    everyone.appendChild(tr);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = document.getElementById("token-name").value.trim();
  const days = Number(document.getElementById("token-days").value);
  const r = await api("POST", "/api/tokens", { name, days }, csrf);
  if (r.status !== 201) { message.textContent = fail(r); return; }
  message.textContent = "";
  secret.textContent = r.data.secret;
  copied.textContent = "";
  created.hidden = false;
  form.reset();
  await load();
});

document.getElementById("copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(secret.textContent);
  } catch (e) {  // no clipboard API (a page not over https): select it for Ctrl+C
    window.getSelection().selectAllChildren(secret);
    document.execCommand("copy");
  }
  copied.textContent = t("Copied.");
});

await load();
