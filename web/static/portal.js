import { api, noticeText, t, wireLogout } from "./common.js";

wireLogout();
const list = document.getElementById("pools");
const template = document.getElementById("pool-item");
const resume = document.getElementById("resume-label").textContent;
const start = document.getElementById("start-label").textContent;

const r = await api("GET", "/api/pools");
list.setAttribute("aria-busy", "false");
if (r.status !== 200) {
  document.getElementById("message").textContent =
    (r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk.");
} else if (r.data.pools.length === 0) {
  document.getElementById("no-pools").hidden = false;
} else {
  for (const pool of r.data.pools) {
    const item = template.content.cloneNode(true);
    const link = item.querySelector("a");
    link.href = `/desktop/${encodeURIComponent(pool.id)}`;
    item.querySelector(".name").textContent = pool.name;
    item.querySelector(".state").textContent = pool.desktop ? resume : start;
    if (pool.notice) {
      const notice = item.querySelector(".notice");
      notice.textContent = noticeText(pool.notice);
      notice.hidden = false;
    }
    list.appendChild(item);
  }
}
