// Images: every image with its versions (released, the one before, trials), importing a
// file of the import folder with its progress, releasing, rolling back, trying a version.
import { api, change, confirmed, el, enc, fail, fill, label, notify, row, t, when } from "./util.js";

const list = document.getElementById("image-list");
const form = document.getElementById("import-form");
const progress = document.getElementById("import-progress");
let pools = [];

const gib = (bytes) => `${(bytes / 2 ** 30).toFixed(bytes % 2 ** 30 ? 1 : 0)} GiB`;

function versionRow(image, v) {
  const actions = el("td", { class: "actions" });
  if (v.state !== "released") {
    actions.append(el("button", { type: "button", class: "secondary", text: t("Release"), onclick: async () => {
      if (!await confirmed(fill(t("Release {image} v{version}? Pools that follow the image get it as their desktops are made afresh."), { image: image.id, version: v.version }))) return;
      if (await change("POST", `/api/admin/images/${enc(image.id)}/release`, { version: v.version },
        fill(t("{image} v{version} released."), { image: image.id, version: v.version }))) await load();
    } }));
  }
  // a pool following the release already runs the released version
  const candidates = pools.filter((p) => p.image === image.id && p.image_version !== v.version
    && !(v.state === "released" && p.image_version === null));
  if (candidates.length) {
    const pick = el("select", { "aria-label": t("Try in pool") },
      el("option", { value: "", text: t("Try in pool…") }), candidates.map((p) => el("option", { value: p.id, text: p.id })));
    pick.addEventListener("change", async () => {
      if (!pick.value) return;
      if (await change("POST", `/api/admin/images/${enc(image.id)}/trial`, { pool: pick.value, version: v.version },
        fill(t("Pool {pool} now runs v{version} (a trial)."), { pool: pick.value, version: v.version }))) await load();
      pick.value = "";
    });
    actions.append(pick);
  }
  const trials = v.trial_pools.map((id) => el("span", { class: "tag" }, id, " ",
    el("button", { type: "button", class: "link", title: t("End the trial"), text: "×", onclick: async () => {
      if (await change("POST", `/api/admin/images/${enc(image.id)}/trial`, { pool: id, version: null },
        fill(t("Pool {pool} follows the released version again."), { pool: id }))) await load();
    } })));
  return row(el("strong", { text: `v${v.version}` }), el("span", { class: `state v-${v.state}`, text: label(v.state) }),
    `${v.firmware} · ${v.os} · ${v.arch}${v.secure_boot ? " · secure boot" : ""}`, gib(v.disk_bytes),
    v.hosts.join(", ") || "-", `${when(v.imported_at)} · ${v.imported_by}`, el("span", {}, trials.length ? trials : "-"), actions);
}

function imageCard(image) {
  const head = el("div", { class: "panel-head" }, el("h3", {}, image.id, el("span", { class: "hint",
    text: ` ${image.released ? fill(t("released: v{version}"), { version: image.released }) : t("not released")}` })));
  if (image.versions.some((v) => v.state === "previous")) {
    head.append(el("button", { type: "button", class: "secondary", text: t("Roll back"), onclick: async () => {
      if (!await confirmed(fill(t("Roll {image} back to the version released before?"), { image: image.id }))) return;
      const done = await change("POST", `/api/admin/images/${enc(image.id)}/rollback`, {});
      if (done) { notify(fill(t("{image} is back at v{version}."), { image: image.id, version: done.released })); await load(); }
    } }));
  }
  return el("article", { class: "image-card", data: { image: image.id } }, head,
    el("p", { class: "hint", text: fill(t("Pools following the release: {pools}"), { pools: image.following.join(", ") || "-" }) }),
    el("table", { class: "grid" }, el("thead", {}, el("tr", {}, [t("Version"), t("State"), t("Kind"), t("Disk"), t("Hosts"),
      t("Imported"), t("Trial in"), ""].map((h) => el("th", { text: h })))), el("tbody", {}, image.versions.slice().reverse().map((v) => versionRow(image, v)))));
}

export async function load() {
  const [images, found, files] = await Promise.all([api("GET", "/api/admin/images"), api("GET", "/api/admin/pools"),
    api("GET", "/api/admin/images/files")]);
  if (images.status !== 200) { list.replaceChildren(el("p", { class: "hint", text: fail(images) })); return; }
  pools = found.status === 200 ? found.data.pools : [];
  list.replaceChildren(...images.data.images.map(imageCard));
  if (!images.data.images.length) list.append(el("p", { class: "hint", text: t("No image imported yet.") }));
  document.getElementById("image-names").replaceChildren(...images.data.images.map((i) => el("option", { value: i.id })));
  if (files.status === 200) {
    const select = form.elements.file;
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: files.data.files.length ? t("Choose a file…") : t("The import folder is empty.") }),
      ...files.data.files.map((f) => el("option", { value: f, text: f })));
    select.value = chosen;
  }
}

const STAGES = { check: "Checking the file", copy: "Copying", convert: "Converting", digest: "Checking the contents",
  upload: "Uploading to {host}", done: "Done" };
const stage = (s) => { const [name, host] = s.split(":"); return fill(t(STAGES[name] || name), { host: host || "" }); };

async function follow(status) {
  const bar = progress.querySelector("progress");
  const text = progress.querySelector("p");
  progress.hidden = false;
  for (;;) {
    const r = await api("GET", status);
    if (r.status !== 200) { text.textContent = fail(r); return; }
    const s = r.data;
    bar.value = s.percent;
    text.textContent = `${stage(s.stage)} · ${s.percent} %`;
    if (s.state === "done") {
      text.textContent = fill(t("Imported as v{version}."), { version: s.version });
      notify(fill(t("Image {image} imported."), { image: s.image }));
      await load();
      return;
    }
    if (s.state !== "running") { text.textContent = fill(t("The import failed: {message}"), { message: s.message || s.state }); return; }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

export function wire() {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.elements.file.value;
    const image = form.elements.image.value.trim();
    if (!file || !image) { notify(t("Choose a file and name the image."), true); return; }
    const started = await change("POST", "/api/admin/images", { image, file });
    if (started) await follow(started.status);
  });
}
