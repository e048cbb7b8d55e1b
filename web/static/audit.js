// The audit administrator's trail (filter, page back, check the hash chain, export) and
// the metering report (desktop-hours and sessions per street office or pool, a chart
// of each day's hours, export). A system administrator's page has the report only.
import {
  BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, Tooltip,
} from "chart.js";
import { api, fill, t, wireLogout } from "./common.js";

Chart.register(BarController, BarElement, CategoryScale, LinearScale, Legend, Tooltip);
wireLogout();

const $ = (id) => document.getElementById(id);
const fail = (r) => (r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk.");
const OUTCOMES = {
  ok: "Succeeded", refused: "Refused", denied: "Refused", failed: "Failed", broken: "Broken",
  closed: "Closed",
};
const lang = document.documentElement.lang || "zh-CN";

function cells(tr, values, numeric = []) {
  values.forEach((v, i) => {
    const td = document.createElement("td");
    td.textContent = v === null || v === undefined ? "" : String(v);
    if (numeric.includes(i)) td.className = "num";
    tr.appendChild(td);
  });
  return tr;
}

function query(form) {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (String(v).trim()) params.set(k, String(v).trim());
  return params;
}

// --- the audit trail -------------------------------------------------------------------
const trailForm = $("trail-filter");
let next = null;

async function showTrail(more) {
  const params = query(trailForm);
  $("trail-csv").href = `/api/admin/audit.csv?${params}`;
  if (more && next) for (const [k, v] of new URLSearchParams(next)) params.set(k, v);
  $("trail-status").textContent = t("Loading…");
  const r = await api("GET", `/api/admin/audit?${params}`);
  if (r.status !== 200) { $("trail-status").textContent = fail(r); return; }
  const body = $("trail").tBodies[0];
  if (!more) body.replaceChildren();
  for (const e of r.data.records) {
    body.appendChild(cells(document.createElement("tr"), [
      e.id, new Date(e.at).toLocaleString(lang), e.actor, e.role, e.action, e.target,
      e.source, t(OUTCOMES[e.outcome] || e.outcome), e.detail]));
  }
  next = r.data.next;
  $("more").hidden = !next;
  $("trail-status").textContent = body.rows.length ? ""
    : t("No record matches.");
}

if (trailForm) {
  trailForm.addEventListener("submit", (e) => { e.preventDefault(); showTrail(false); });
  $("more").addEventListener("click", () => showTrail(true));
  $("verify").addEventListener("click", async () => {
    const out = $("verdict");
    out.hidden = false;
    out.className = "verdict";
    out.textContent = t("Checking…");
    const r = await api("GET", "/api/admin/audit/verify");
    if (r.status !== 200) { out.textContent = fail(r); return; }
    out.classList.add(r.data.intact ? "intact" : "broken");
    out.textContent = r.data.intact
      ? fill(t("The chain is intact: {n} records, none edited, deleted or reordered."), { n: r.data.records })
      : fill(t("The chain is broken: {problems}"), { problems: r.data.problems.join("; ") });
  });
  showTrail(false);
}

// --- metering ---------------------------------------------------------------------------
const meterForm = $("meter-filter");
const COLORS = ["#2680c2", "#f0b429", "#3ebd93", "#ef4e4e", "#9446ed", "#57ae5b", "#e668a7",
  "#627d98", "#de911d", "#0e7c86"];
let chart = null;

function drawChart(report) {
  const names = Object.fromEntries(report.lines.map((l) => [l.key, l.name || t("District")]));
  // every day of the range, those without use too (the report lists only days with use)
  const days = [];
  for (let d = new Date(`${report.from}T00:00:00Z`); d <= new Date(`${report.to}T00:00:00Z`);
    d = new Date(d.getTime() + 86400000)) days.push(d.toISOString().slice(0, 10));
  const byDay = Object.fromEntries(report.daily.map((d) => [d.day, d.hours]));
  const datasets = report.lines.map((l, i) => ({
    label: names[l.key],
    data: days.map((day) => (byDay[day] || {})[l.key] || 0),
    backgroundColor: COLORS[i % COLORS.length],
    maxBarThickness: 28,
  }));
  if (chart) chart.destroy();
  chart = new Chart($("meter-chart"), {
    type: "bar",
    data: { labels: days.map((d) => d.slice(5)), datasets },
    options: {
      responsive: true, maintainAspectRatio: false, animation: false,
      scales: {
        x: { stacked: true },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: t("Desktop-hours") } },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });
}

// hours as a reader wants them: two decimals, and a use of seconds not shown as nothing
const hoursText = (h) => (h > 0 && h < 0.005 ? "< 0.01" : h.toFixed(2));

async function showMeter() {
  const params = query(meterForm);
  $("meter-key").textContent = params.get("by") === "pool" ? t("Desktop pool") : t("Street office");
  $("meter-status").textContent = t("Loading…");
  const r = await api("GET", `/api/admin/metering?${params}`);
  if (r.status !== 200) { $("meter-status").textContent = fail(r); return; }
  const body = $("meter").tBodies[0];
  body.replaceChildren();
  for (const l of r.data.lines) {
    body.appendChild(cells(document.createElement("tr"), [
      l.name || t("District"), l.sessions, hoursText(l.hours), l.clerks], [1, 2, 3]));
  }
  $("total-sessions").textContent = r.data.total.sessions;
  $("total-hours").textContent = hoursText(r.data.total.hours);
  // the district's days: the first report (no dates given) says which they are
  meterForm.elements.from.value = r.data.from;
  meterForm.elements.to.value = r.data.to;
  $("meter-csv").href = `/api/admin/metering.csv?from=${r.data.from}&to=${r.data.to}&by=${r.data.by}`;
  $("meter-status").textContent = r.data.lines.length ? ""
    : t("No desktop was used in these days.");
  drawChart(r.data);
}

if (meterForm) {
  meterForm.addEventListener("submit", (e) => { e.preventDefault(); showMeter(); });
  showMeter();
}
