// "Desktops in use over the day": GET /api/admin/usage?day=YYYY-MM-DD, one point per step
// of the district's day.
import { CategoryScale, Chart, Filler, LinearScale, LineController, LineElement, PointElement, Tooltip } from "chart.js";
import { api, fail, t } from "./util.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale, Filler, Tooltip);

const dayInput = document.getElementById("usage-day");
const status = document.getElementById("usage-status");
let chart = null;

const today = () => {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
};

function draw(points) {
  // the district's wall clock: the day's points start at its midnight
  const start = points.length ? new Date(points[0].at).getTime() : 0;
  const labels = points.map((p) => {
    const minutes = Math.round((new Date(p.at).getTime() - start) / 60000);
    return `${String(Math.floor(minutes / 60)).padStart(2, "0")}:${String(minutes % 60).padStart(2, "0")}`;
  });
  const values = points.map((p) => p.in_use);
  if (chart) {
    chart.data.labels = labels;
    chart.data.datasets[0].data = values;
    chart.update("none");
    return;
  }
  chart = new Chart(document.getElementById("usage-chart"), {
    type: "line",
    data: { labels, datasets: [{ label: t("Desktops in use"), data: values, borderColor: "#0b62a4",
      backgroundColor: "rgba(11, 98, 164, .15)", fill: true, pointRadius: 0, borderWidth: 2, tension: 0.2 }] },
    options: {
      animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
      scales: { x: { ticks: { maxTicksLimit: 13, autoSkip: true } },
        y: { beginAtZero: true, ticks: { precision: 0 } } },
      plugins: { legend: { display: false } },
    },
  });
}

export async function refresh() {
  const day = dayInput.value || today();
  const r = await api("GET", `/api/admin/usage?day=${encodeURIComponent(day)}`);
  if (r.status !== 200) {
    status.textContent = r.status === 404 ? t("No usage figures for this day.") : fail(r);
    draw([]);
    return;
  }
  draw(r.data.points);
  status.textContent = r.data.points.some((p) => p.in_use > 0) ? "" : t("No desktop was in use that day.");
}

export function wire() {
  dayInput.value = today();
  dayInput.max = today();
  dayInput.addEventListener("change", refresh);
}

export const showsToday = () => !dayInput.value || dayInput.value === today();
