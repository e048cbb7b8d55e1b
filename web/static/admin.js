// The system administrator's console: tabs over the overview (refreshed every few
// seconds), pools, images, hosts, desktops and sessions; one module per noun.
import { wireLogout } from "./common.js";
import * as dashboard from "./admin/dashboard.js";
import * as desktops from "./admin/desktops.js";
import * as hosts from "./admin/hosts.js";
import * as images from "./admin/images.js";
import * as pools from "./admin/pools.js";
import * as sessions from "./admin/sessions.js";
import * as usage from "./admin/usage.js";

wireLogout();
const TABS = { overview: null, pools, images, hosts, desktops, sessions };
// the tabs whose contents change on their own, read again with the overview (not the
// sessions: each reading of them is recorded in the audit trail)
const LIVE = new Set(["hosts", "desktops"]);
let current = "overview";

function show(name) {
  current = name;
  for (const button of document.querySelectorAll("[role=tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const tab of Object.keys(TABS)) document.getElementById(`tab-${tab}`).hidden = tab !== name;
  if (name === "overview") { dashboard.refresh(); usage.refresh(); } else TABS[name].load();
  history.replaceState(null, "", `#${name}`);
}

for (const button of document.querySelectorAll("[role=tab]")) button.addEventListener("click", () => show(button.dataset.tab));
for (const m of [pools, images, hosts, desktops]) m.wire();
usage.wire();
const asked = location.hash.slice(1);
show(asked in TABS ? asked : "overview");

let ticks = 0;
setInterval(() => {
  ticks += 1;
  dashboard.refresh();
  if (current === "overview" && usage.showsToday() && ticks % 12 === 0) usage.refresh();
  if (LIVE.has(current)) TABS[current].load();
}, dashboard.EVERY_MS);
