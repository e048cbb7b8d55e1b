// The pool form's idle policy and spare schedule: shown from, and read back into, the
// JSON the API takes (the policy file's tables: calendar, shifts, spares).

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const SHIFT_FIELDS = ["disconnect_grace_s", "idle_warn_after_s", "idle_countdown_s"];
const lines = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);

function levelRow(form, level) {
  const node = document.getElementById("level-row").content.firstElementChild.cloneNode(true);
  node.querySelector("[name=days]").value = level.days;
  node.querySelector("[name=at]").value = level.at;
  node.querySelector("[name=level]").value = level.min_ready;
  node.querySelector(".remove").addEventListener("click", () => node.remove());
  form.querySelector("#level-rows").append(node);
}

export function wire(form) {
  form.querySelector("#level-add").addEventListener("click",
    () => levelRow(form, { days: "working", at: "08:00", min_ready: 1 }));
}

/** Fill the form from a pool's policy (null: a new pool, the defaults of the API). */
export function show(form, policy) {
  const cal = (policy && policy.calendar) || { timezone: "Asia/Shanghai", working_days: DAYS.slice(0, 5),
    opens: "08:30", closes: "17:30", holidays: [], makeup_days: [] };
  form.elements.timezone.value = cal.timezone;
  form.elements.opens.value = cal.opens;
  form.elements.closes.value = cal.closes;
  for (const d of DAYS) form.elements[`day-${d}`].checked = cal.working_days.includes(d);
  form.elements.holidays.value = cal.holidays.join("\n");
  form.elements.makeup_days.value = cal.makeup_days.join("\n");
  const shifts = (policy && policy.shifts) || {};
  for (const tr of form.querySelectorAll("tr[data-shift]")) {
    const s = shifts[tr.dataset.shift];
    for (const f of [...SHIFT_FIELDS, "idle_action", "logoff_action"]) {
      const input = tr.querySelector(`[name=${f}]`);
      if (s) input.value = s[f];
      else input.value = input.tagName === "SELECT" ? "disconnect" : "";
    }
    if (!s) tr.querySelector("[name=logoff_action]").value = "log_off";
  }
  const spares = policy && policy.spares;
  form.elements.spare_mode.value = spares ? spares.mode : "";
  form.elements.lead_min.value = spares ? Math.round(spares.lead_s / 60) : 30;
  form.elements.weeks.value = spares ? spares.weeks : 4;
  form.querySelector("#level-rows").replaceChildren();
  for (const level of (spares && spares.levels) || []) levelRow(form, level);
}

/** The policy as the form says it; for a new pool with shifts left empty, only the
 * calendar and the spares (the API fills in the defaults for the pool's kind). */
export function read(form) {
  const e = form.elements;
  const policy = {
    calendar: {
      timezone: e.timezone.value.trim(), opens: e.opens.value, closes: e.closes.value,
      working_days: DAYS.filter((d) => e[`day-${d}`].checked),
      holidays: lines(e.holidays.value), makeup_days: lines(e.makeup_days.value),
    },
    shifts: {},
  };
  for (const tr of form.querySelectorAll("tr[data-shift]")) {
    const values = {};
    for (const f of SHIFT_FIELDS) {
      const v = tr.querySelector(`[name=${f}]`).value;
      if (v !== "") values[f] = Number(v);
    }
    if (Object.keys(values).length) {
      for (const f of ["idle_action", "logoff_action"]) values[f] = tr.querySelector(`[name=${f}]`).value;
      policy.shifts[tr.dataset.shift] = values;
    }
  }
  if (e.spare_mode.value) {
    policy.spares = {
      mode: e.spare_mode.value, lead_s: Number(e.lead_min.value) * 60, weeks: Number(e.weeks.value),
      levels: [...form.querySelectorAll("#level-rows tr")].map((tr) => ({
        days: tr.querySelector("[name=days]").value, at: tr.querySelector("[name=at]").value,
        min_ready: Number(tr.querySelector("[name=level]").value),
      })),
    };
  }
  return policy;
}

