import { api, t } from "./common.js";

const form = document.getElementById("login-form");
const message = document.getElementById("message");
const button = document.getElementById("login-button");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) { message.textContent = t("Please fill in both fields."); return; }
  sessionStorage.setItem("vdiLoginClick", String(Date.now()));
  button.disabled = true;
  message.textContent = t("Signing in…");
  try {
    const r = await api("POST", "/api/session", { username, password });
    if (r.status !== 200) {
      message.textContent = (r.data && r.data.message) || t("Wrong username or password.");
      form.password.value = "";
      form.password.focus();
      return;
    }
    const pools = await api("GET", "/api/pools");
    const list = (pools.data && pools.data.pools) || [];
    // One pool: straight to the desktop, the clerk has nothing to choose.
    window.location.href = list.length === 1 ? `/desktop/${encodeURIComponent(list[0].id)}` : "/";
  } catch (e) {
    message.textContent = t("Something went wrong. Try again or call the helpdesk.");
  } finally {
    button.disabled = false;
  }
});
