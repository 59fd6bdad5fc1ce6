// View Data: search and browse an imageindex dataset inside the Airflow UI.
//
// Plain browser JavaScript, no build step. The page is served by the plugin at
// <airflow>/imageindex/ui/ and shown by the Airflow UI in a same-origin iframe. It calls the
// plugin's API with the Airflow UI's own login: Airflow 3.3 keeps the JWT in the HttpOnly
// `_token` cookie (its UI keeps no token in localStorage), so every request here is a
// same-origin fetch that carries that cookie. Nothing here can read or store the token.
"use strict";

(() => {
  const API = new URL("../", window.location.href); // <airflow>/imageindex/
  const AIRFLOW = new URL("../", API); // the Airflow UI root, for links to DAGs
  const MAX_UPLOAD = 20 * 1024 * 1024;

  const $ = (id) => document.getElementById(id);

  const state = {
    datasets: [],
    dataset: null,
    version: null,
    view: "gallery",
    hits: [],
    cursor: null,
    ranked: false,
    body: null, // the last search body, reused for "load more"
    upload: null, // File: search by an uploaded image
    similar: null, // {uri, file_name, id}: search by an indexed image
    selected: new Set(),
    anchor: null, // index the next shift-click extends from
    detail: null, // index shown in the large view
    controller: null,
    run: null, // the version's latest run (RunOut), shown above the search form
  };

  // ------------------------------------------------------------------------------------------
  // small helpers

  // Builds elements from data without ever parsing it as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key in el && typeof value !== "string") el[key] = value;
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && body.detail;
      let message;
      if (Array.isArray(detail)) {
        message = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      } else {
        message = detail || `request failed (HTTP ${status})`;
      }
      super(message);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(path, { method = "GET", json, form, signal } = {}) {
    const options = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
    if (json !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(json);
    } else if (form) {
      options.body = form;
    }
    const response = await fetch(new URL(path, API), options);
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      if (response.status === 401) showSessionEnded();
      throw new ApiError(response.status, body);
    }
    return body;
  }

  const enc = encodeURIComponent;

  function datasetPath(rest) {
    return `datasets/${enc(state.dataset.id)}${rest}`;
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function formatTime(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toLocaleString();
  }

  // Python's pathlib.Path.as_uri() percent-encodes every byte but letters, digits and "_.-~/",
  // so a relative path typed here must be encoded the same way to prefix local uris.
  function quotePath(text) {
    return Array.from(new TextEncoder().encode(text))
      .map((b) => {
        const c = String.fromCharCode(b);
        return /[A-Za-z0-9_.\-~/]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
      })
      .join("");
  }

  let toastTimer = null;
  function toast(message) {
    const el = $("toast");
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      el.hidden = true;
    }, 4000);
  }

  function showFormError(message) {
    const el = $("form-error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function showDslError(error) {
    const box = $("dsl-error");
    const input = $("dsl");
    if (!error) {
      box.hidden = true;
      box.textContent = "";
      input.removeAttribute("aria-invalid");
      return;
    }
    const lines = input.value.split("\n");
    let text = error.detail;
    if (error.column) {
      const line = lines[(error.line || 1) - 1] || "";
      text += `\n${line}\n${" ".repeat(error.column - 1)}^ column ${error.column}`;
    }
    box.textContent = text;
    box.hidden = false;
    input.setAttribute("aria-invalid", "true");
    if (typeof error.position === "number") {
      input.focus();
      input.setSelectionRange(error.position, error.position);
    }
  }

  function showSessionEnded() {
    showEmpty(
      "Your Airflow session has ended",
      h("p", null, "Log in to Airflow again, then come back to this page."),
      h("p", null, h("button", { type: "button", onclick: () => window.location.reload() }, "Log in")),
    );
  }

  function showEmpty(title, ...body) {
    const el = $("empty");
    el.replaceChildren(h("h2", null, title), ...body);
    el.hidden = false;
    $("results").replaceChildren();
    $("more").hidden = true;
  }

  function hideEmpty() {
    $("empty").hidden = true;
  }

  // ------------------------------------------------------------------------------------------
  // theme: follow the Airflow UI around the page (its color mode is a class on <html>)

  function followAirflowTheme() {
    let root;
    try {
      if (window.parent === window) return;
      root = window.parent.document.documentElement;
    } catch {
      return; // not same-origin: the OS preference applies
    }
    const apply = () => {
      const cls = root.classList;
      const mode = cls.contains("dark") ? "dark" : cls.contains("light") ? "light" : root.style.colorScheme;
      if (mode === "dark" || mode === "light") document.documentElement.dataset.theme = mode;
      else delete document.documentElement.dataset.theme;
    };
    apply();
    new MutationObserver(apply).observe(root, { attributes: true, attributeFilter: ["class", "style"] });
  }

  // ------------------------------------------------------------------------------------------
  // chip inputs (tags)

  function chipInput(container, label) {
    const values = [];
    const list = h("span", { class: "chips" });
    const input = h("input", { type: "text", list: "tag-names", "aria-label": label, placeholder: "tag, Enter" });
    container.append(list, input);
    const render = () => {
      list.replaceChildren(
        ...values.map((v, i) =>
          h("span", { class: "chip" }, v,
            h("button", { type: "button", "aria-label": `remove ${v}`, onclick: () => { values.splice(i, 1); render(); } }, "×")),
        ),
      );
    };
    const commit = () => {
      for (const part of input.value.split(",")) {
        const tag = part.trim();
        if (tag && !values.includes(tag)) values.push(tag);
      }
      input.value = "";
      render();
    };
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === ",") {
        if (input.value.trim()) {
          ev.preventDefault();
          commit();
        }
      } else if (ev.key === "Backspace" && !input.value && values.length) {
        values.pop();
        render();
      }
    });
    input.addEventListener("change", () => {
      // Picking from the datalist fires "change" without a key press.
      if (input.value.trim()) commit();
    });
    input.addEventListener("blur", () => {
      if (input.value.trim()) commit();
    });
    container.addEventListener("click", (ev) => {
      if (ev.target === container) input.focus();
    });
    return {
      get: () => {
        commit();
        return values.slice();
      },
      set: (tags) => {
        values.splice(0, values.length, ...tags);
        render();
      },
      input,
    };
  }

  const tagInputs = {
    any: chipInput($("tags-any"), "Tags: any of"),
    all: chipInput($("tags-all"), "Tags: all of"),
    exclude: chipInput($("tags-exclude"), "Tags: none of"),
  };

  // ------------------------------------------------------------------------------------------
  // datasets

  function currentVersion() {
    return state.dataset.versions.find((v) => v.name === state.version) || state.dataset.versions[0];
  }

  function remember() {
    const url = new URL(window.location.href);
    url.searchParams.set("dataset", state.dataset.id);
    url.searchParams.set("version", state.version);
    window.history.replaceState(null, "", url);
  }

  async function loadDatasets() {
    let data;
    try {
      data = await api("datasets");
    } catch (err) {
      if (err.status !== 401) showEmpty("Cannot load datasets", h("p", null, err.message));
      return;
    }
    state.datasets = data.datasets;
    const select = $("dataset");
    select.replaceChildren(...state.datasets.map((d) => h("option", { value: d.id }, d.id)));
    if (!state.datasets.length) {
      $("search").hidden = true;
      showEmpty(
        "No datasets to show",
        h("p", null, "Either no dataset is registered yet, or you may not read any of their DAGs."),
        h("p", null, "Add a dataset to the registry file (",
          h("code", null, "IMAGEINDEX_REGISTRY"), "; see the README, “Adding a dataset”), then trigger its ",
          h("code", null, "imageindex_<dataset>"), " DAG."),
      );
      return;
    }
    const params = new URLSearchParams(window.location.search);
    const wanted = state.datasets.find((d) => d.id === params.get("dataset")) || state.datasets[0];
    selectDataset(wanted.id, params.get("version"));
  }

  function selectDataset(id, version) {
    state.dataset = state.datasets.find((d) => d.id === id);
    $("dataset").value = id;
    const versions = state.dataset.versions;
    $("version").replaceChildren(
      ...versions.map((v) => h("option", { value: v.name }, v.current ? `${v.name} (current)` : v.name)),
    );
    const chosen = versions.find((v) => v.name === version) || versions.find((v) => v.current) || versions[0];
    state.version = chosen.name;
    $("version").value = chosen.name;
    $("tag-names").replaceChildren(...state.dataset.tag_names.map((t) => h("option", { value: t })));
    $("bulk-tag-edit").hidden = !state.dataset.can_edit;
    $("detail-tag-form").hidden = !state.dataset.can_edit;
    clearSelection();
    remember();
    showDatasetInfo();
    loadRun();
    search();
  }

  function showDatasetInfo() {
    const v = currentVersion();
    const parts = [`${v.ok} indexed`];
    if (v.failed) parts.push(`${v.failed} failed`);
    if (v.last_run && v.last_run.finished_at) parts.push(`last run ${new Date(v.last_run.finished_at).toLocaleString()}`);
    $("dataset-info").textContent = parts.join(" · ");
    $("dataset-info").title = state.dataset.description || "";
  }

  function notIndexedYet() {
    const dagId = state.dataset.dag_id;
    const dagUrl = new URL(`dags/${enc(dagId)}`, AIRFLOW);
    showEmpty(
      `Nothing indexed in ${state.dataset.id} / ${state.version} yet`,
      h("p", null, "Trigger the ", h("a", { href: dagUrl.href, target: "_top" }, dagId),
        " DAG (the ▶ Trigger button, with version ", h("code", null, state.version),
        "). Images appear here as soon as its run has finished."),
      h("p", null, "From a shell: ", h("code", null, `airflow dags trigger ${dagId}`), " or ",
        h("code", null, `imageindex index --dataset ${state.dataset.id}`)),
    );
  }

  // ------------------------------------------------------------------------------------------
  // the version's latest run: files done per stage while in flight, its report afterwards

  const RUN_POLL_MS = 3000; // a run in flight: that run's folder only
  const IDLE_POLL_MS = 30000; // otherwise: whether a new run has started
  const ACTIVE_RUN = new Set(["planning", "running"]);
  let runTimer = null;
  let runKey = null; // "dataset/version" the panel is for; a late answer for another is dropped

  async function loadRun() {
    clearTimeout(runTimer);
    const key = `${state.dataset.id}/${state.version}`;
    if (key !== runKey) state.run = null;
    runKey = key;
    const before = state.run;
    const runs = `/versions/${enc(state.version)}/runs`;
    let run;
    try {
      run = before && ACTIVE_RUN.has(before.state)
        ? await api(datasetPath(`${runs}/${enc(before.run)}`))
        : (await api(datasetPath(`${runs}?limit=1`))).runs[0] || null;
    } catch (err) {
      if (key !== runKey) return;
      $("run").hidden = true; // staging unreachable: the page works without; try again later
      if (err.status !== 401) runTimer = setTimeout(loadRun, IDLE_POLL_MS);
      return;
    }
    if (key !== runKey) return;
    state.run = run;
    renderRun();
    const active = run && ACTIVE_RUN.has(run.state);
    runTimer = setTimeout(loadRun, active ? RUN_POLL_MS : IDLE_POLL_MS);
    if (!active && before && ACTIVE_RUN.has(before.state) && run && run.run === before.run) {
      refreshDataset(); // it has just finished: new counts, new images
    }
  }

  async function refreshDataset() {
    let fresh;
    try {
      fresh = await api(datasetPath(""));
    } catch {
      return;
    }
    if (!state.dataset || fresh.id !== state.dataset.id) return;
    state.datasets = state.datasets.map((d) => (d.id === fresh.id ? fresh : d));
    state.dataset = fresh;
    showDatasetInfo();
    search();
  }

  function stageRow(stage) {
    const names = { preprocess: "Preprocess", tag_embed: "Tag & embed", upsert: "Upsert" };
    return h("div", { class: "stage", "data-stage": stage.stage },
      h("span", { class: "stage-name" }, names[stage.stage] || stage.stage),
      h("progress", { max: Math.max(stage.total, 1), value: stage.done, "aria-label": `${stage.stage} files done` }),
      h("span", { class: "stage-count" }, `${stage.done} / ${stage.total} files`),
      h("span", { class: "muted" }, `${stage.shards_done} / ${stage.shards} shards`));
  }

  function renderRun() {
    const run = state.run;
    const panel = $("run");
    if (!run) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    panel.dataset.state = run.state;
    $("run-title").textContent = run.state === "finished" ? "Last run" : "Run";
    $("run-state").textContent = run.state;
    $("run-state").className = `badge ${run.state}`;
    const runId = run.run_id || run.run;
    const link = $("run-link");
    link.textContent = runId;
    link.href = new URL(`dags/${enc(state.dataset.dag_id)}/runs/${enc(runId)}`, AIRFLOW).href;
    const when = [];
    if (run.started_at) when.push(`started ${new Date(run.started_at).toLocaleString()}`);
    if (run.finished_at) when.push(`finished ${new Date(run.finished_at).toLocaleString()}`);
    $("run-when").textContent = when.join(" · ");

    const stages = $("run-stages");
    const report = $("run-report");
    if (run.state === "finished") {
      stages.replaceChildren();
      report.replaceChildren(...runReport(run));
      return;
    }
    stages.replaceChildren(...run.stages.map(stageRow));
    const notes = {
      planning: "Listing the source and cutting shards…",
      running: run.files === 0 ? "Nothing to process; finishing…" : null,
      stopped: "This run stopped before it finished (a task failed or was stopped); see it in Airflow.",
    };
    report.replaceChildren(...(notes[run.state] ? [h("p", { class: "muted" }, notes[run.state])] : []));
  }

  function runReport(run) {
    const r = run.report;
    const counts = [
      `${r.processed} processed`,
      `${r.new} new`,
      `${r.changed} changed`,
      `${r.deleted} deleted`,
      `${r.failed} failed`,
      `${r.indexed_ok} indexed`,
    ];
    const out = [h("p", { id: "run-counts" }, counts.join(" · "))];
    const reasons = Object.entries(r.failed_by_reason || {}).sort((a, b) => b[1] - a[1]);
    if (reasons.length) {
      out.push(h("ul", { id: "run-failures", class: "reasons", "aria-label": "Failures by reason" },
        reasons.map(([reason, n]) => h("li", null, h("code", null, reason), ` ${n}`))));
    }
    if (run.failed_filter) {
      out.push(h("button", { type: "button", id: "run-show-failed", class: "secondary",
        onclick: () => showFailedFiles(run.failed_filter) }, "Show failed files"));
    }
    if (r.refused_delete) out.push(h("p", { class: "error" }, r.refused_delete));
    return out;
  }

  function showFailedFiles(filter) {
    if (filter.version !== state.version) {
      state.version = filter.version;
      $("version").value = filter.version;
      remember();
      showDatasetInfo();
    }
    resetForm({ thenSearch: false });
    $("dsl").value = filter.dsl;
    search();
  }

  // ------------------------------------------------------------------------------------------
  // search

  function optional(id) {
    const value = $(id).value.trim();
    return value || null;
  }

  function pathPrefix() {
    const value = optional("path-prefix");
    if (!value || value.includes("://")) return value;
    const source = currentVersion().source.replace(/\/+$/, "");
    const rel = value.replace(/^\/+/, "");
    return `${source}/${source.startsWith("file:") ? quotePath(rel) : rel}`;
  }

  function buildBody() {
    const threshold = $("threshold").value.trim();
    return {
      version: state.version,
      text: state.upload || state.similar ? null : optional("text"),
      image_uri: state.similar ? state.similar.uri : null,
      dsl: optional("dsl"),
      tags_any: tagInputs.any.get(),
      tags_all: tagInputs.all.get(),
      tags_exclude: tagInputs.exclude.get(),
      file_name: optional("file-name"),
      path_prefix: pathPrefix(),
      mtime_from: optional("mtime-from"),
      mtime_to: optional("mtime-to"),
      top_k: Number($("top-k").value) || 60,
      score_threshold: threshold === "" ? null : Number(threshold),
      sort: $("sort").value,
    };
  }

  async function search({ more = false } = {}) {
    if (!state.dataset) return;
    if (!currentVersion().indexed) {
      state.hits = [];
      renderResults();
      $("status").textContent = "";
      notIndexedYet();
      return;
    }
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const body = more ? { ...state.body, cursor: state.cursor } : buildBody();
    if (!more) state.body = body;
    showFormError(null);
    showDslError(null);
    $("go").disabled = true;
    $("more").disabled = true;
    $("status").textContent = more ? "Loading more…" : "Searching…";
    let result;
    try {
      if (state.upload) {
        const form = new FormData();
        form.append("file", state.upload, state.upload.name || "image");
        form.append("request", JSON.stringify(body));
        result = await api(datasetPath("/search/image"), { method: "POST", form, signal: controller.signal });
      } else {
        result = await api(datasetPath("/search"), { method: "POST", json: body, signal: controller.signal });
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      $("status").textContent = "";
      if (err.status === 401) return;
      if (err.status === 400 && err.body && "column" in err.body && body.dsl) {
        showDslError(err.body);
      } else if (err.status === 404 && /no indexed images/.test(err.message)) {
        notIndexedYet();
      } else {
        showFormError(err.message);
      }
      return;
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        $("go").disabled = false;
        $("more").disabled = false;
      }
    }
    if (!more) {
      state.hits = [];
      state.selected.clear();
      state.anchor = null;
    }
    state.hits.push(...result.hits);
    state.cursor = result.next_cursor;
    state.ranked = result.ranked;
    renderResults();
    renderStatus(result.query);
  }

  function renderStatus(query) {
    const n = state.hits.length;
    const parts = [`${n} image${n === 1 ? "" : "s"}${state.cursor ? " (more available)" : ""}`];
    if (state.ranked) {
      const what = state.upload ? "the uploaded image" : state.similar ? state.similar.file_name : `“${state.body.text}”`;
      parts.push(`ranked by similarity to ${what}`);
    }
    // Every query is scoped to the version shown in the header; only the rest is news.
    const scope = `dataset_version = ${state.version}`;
    const filter = query === scope ? "" : (query || "").replace(` AND ${scope}`, "").replace(`${scope} AND `, "");
    if (filter) parts.push(`filter: ${filter}`);
    $("status").textContent = parts.join(" · ");
  }

  // ------------------------------------------------------------------------------------------
  // results: gallery and list

  function thumbnail(hit, cls) {
    if (!hit.thumbnail_uri) return h("span", { class: "failed" }, "no preview");
    return h("img", {
      src: hit.thumbnail_url,
      alt: hit.file_name,
      loading: "lazy",
      decoding: "async",
      class: cls,
      width: hit.width || null,
      height: hit.height || null,
    });
  }

  function tagList(hit, limit) {
    const items = [
      ...hit.tags.user.map((t) => h("li", { class: "tag user", title: `user tag: ${t}` }, t)),
      ...hit.tags.ai.map((t) => h("li", { class: "tag", title: `tag: ${t}` }, t)),
    ];
    if (limit && items.length > limit) {
      const rest = items.length - limit;
      items.splice(limit, rest, h("li", { class: "tag" }, `+${rest}`));
    }
    return h("ul", { class: "tags" }, items);
  }

  function renderResults() {
    const container = $("results");
    if (!state.hits.length) {
      container.replaceChildren();
      $("more").hidden = true;
      if (state.body) {
        showEmpty(
          "No images match",
          h("p", null, state.body.score_threshold !== null
            ? "Lower the minimum score under Advanced settings, or remove some filters."
            : "Remove some filters or change the query."),
        );
      }
      return;
    }
    hideEmpty();
    container.replaceChildren(state.view === "gallery" ? renderGallery() : renderList());
    $("more").hidden = !state.cursor;
    renderSelection();
  }

  function renderGallery() {
    return h("ul", { class: "gallery", role: "listbox", "aria-multiselectable": "true", "aria-label": "Images" },
      state.hits.map((hit, i) =>
        h("li", {
          class: "card",
          role: "option",
          tabindex: "0",
          "data-index": String(i),
          "aria-selected": String(state.selected.has(hit.id)),
          "aria-label": hit.file_name,
        },
        h("input", { type: "checkbox", class: "pick", tabindex: "-1", "aria-label": `select ${hit.file_name}`, checked: state.selected.has(hit.id) }),
        h("div", { class: "thumb" }, thumbnail(hit)),
        h("div", { class: "info" },
          h("span", { class: "name", title: hit.uri }, hit.file_name),
          h("span", { class: "sub" },
            h("span", null, hit.width ? `${hit.width}×${hit.height}` : ""),
            state.ranked ? h("span", { class: "score", title: "cosine similarity" }, hit.score.toFixed(3)) : null),
          tagList(hit, 6)),
        ),
      ),
    );
  }

  function renderList() {
    const head = h("thead", null, h("tr", null,
      h("th", null, h("input", { type: "checkbox", class: "pick-all", "aria-label": "select all shown", checked: state.hits.length > 0 && state.selected.size === state.hits.length })),
      h("th", null, ""),
      h("th", null, "File"),
      h("th", { class: "num" }, state.ranked ? "Score" : ""),
      h("th", { class: "num" }, "Size"),
      h("th", { class: "num" }, "Pixels"),
      h("th", null, "Modified"),
      h("th", null, "Tags")));
    const rows = state.hits.map((hit, i) =>
      h("tr", { "data-index": String(i), tabindex: "0", "aria-selected": String(state.selected.has(hit.id)) },
        h("td", null, h("input", { type: "checkbox", class: "pick", tabindex: "-1", "aria-label": `select ${hit.file_name}`, checked: state.selected.has(hit.id) })),
        h("td", null, thumbnail(hit)),
        h("td", null, h("div", null, hit.file_name), h("div", { class: "path" }, hit.uri)),
        h("td", { class: "num" }, state.ranked ? h("span", { class: "score" }, hit.score.toFixed(3)) : ""),
        h("td", { class: "num" }, formatBytes(hit.size)),
        h("td", { class: "num" }, hit.width ? `${hit.width}×${hit.height}` : ""),
        h("td", null, formatTime(hit.mtime)),
        h("td", null, tagList(hit))),
    );
    return h("table", { class: "list", "aria-label": "Images" }, head, h("tbody", null, rows));
  }

  // ------------------------------------------------------------------------------------------
  // selection: click opens, ctrl/cmd-click or the checkbox toggles, shift-click selects a range

  function clearSelection() {
    state.selected.clear();
    state.anchor = null;
    renderSelection();
  }

  function toggle(index) {
    const id = state.hits[index].id;
    if (state.selected.has(id)) state.selected.delete(id);
    else state.selected.add(id);
    state.anchor = index;
  }

  function selectRange(index) {
    const from = state.anchor === null ? index : state.anchor;
    const [lo, hi] = from < index ? [from, index] : [index, from];
    for (let i = lo; i <= hi; i += 1) state.selected.add(state.hits[i].id);
  }

  function renderSelection() {
    for (const el of $("results").querySelectorAll("[data-index]")) {
      const hit = state.hits[Number(el.dataset.index)];
      const on = Boolean(hit) && state.selected.has(hit.id);
      el.setAttribute("aria-selected", String(on));
      const box = el.querySelector(".pick");
      if (box) box.checked = on;
    }
    const all = $("results").querySelector(".pick-all");
    if (all) all.checked = state.hits.length > 0 && state.selected.size === state.hits.length;
    const n = state.selected.size;
    $("selection-bar").hidden = n === 0;
    $("selection-count").textContent = `${n} selected`;
    $("bulk-similar").disabled = n !== 1;
  }

  function onResultsClick(ev) {
    if (ev.target.classList.contains("pick-all")) {
      if (ev.target.checked) state.hits.forEach((hit) => state.selected.add(hit.id));
      else state.selected.clear();
      renderSelection();
      return;
    }
    const item = ev.target.closest("[data-index]");
    if (!item) return;
    const index = Number(item.dataset.index);
    if (ev.shiftKey) {
      ev.preventDefault();
      selectRange(index);
    } else if (ev.ctrlKey || ev.metaKey || ev.target.classList.contains("pick")) {
      toggle(index);
    } else {
      openDetail(index);
      return;
    }
    renderSelection();
  }

  function onResultsKey(ev) {
    const item = ev.target.closest("[data-index]");
    if (!item) return;
    const index = Number(item.dataset.index);
    if (ev.key === "Enter") {
      ev.preventDefault();
      openDetail(index);
    } else if (ev.key === " ") {
      ev.preventDefault();
      if (ev.shiftKey) selectRange(index);
      else toggle(index);
      renderSelection();
    }
  }

  function selectedIds() {
    return state.hits.filter((hit) => state.selected.has(hit.id)).map((hit) => hit.id);
  }

  // ------------------------------------------------------------------------------------------
  // user tags

  function applyTags(documents) {
    const byId = new Map(documents.map((d) => [d.id, d.tags]));
    for (const hit of state.hits) {
      if (byId.has(hit.id)) hit.tags = byId.get(hit.id);
    }
    const scroll = window.scrollY;
    renderResults();
    window.scrollTo(0, scroll);
  }

  async function changeTags(ids, tags, add) {
    const method = add ? "POST" : "DELETE";
    const path = ids.length === 1 ? datasetPath(`/files/${enc(ids[0])}/tags`) : datasetPath("/tags");
    const json = ids.length === 1 ? { tags } : { ids, tags };
    const result = await api(path, { method, json });
    applyTags(result.documents);
    return result;
  }

  async function bulkTag(add) {
    const tag = $("bulk-tag").value.trim();
    if (!tag) {
      $("bulk-tag").focus();
      return;
    }
    try {
      const result = await changeTags(selectedIds(), [tag], add);
      toast(`${add ? "Added" : "Removed"} “${tag}” ${add ? "to" : "from"} ${result.changed} image${result.changed === 1 ? "" : "s"}`);
      $("bulk-tag").value = "";
    } catch (err) {
      toast(err.message);
    }
  }

  // ------------------------------------------------------------------------------------------
  // large view

  async function openDetail(index) {
    state.detail = index;
    const hit = state.hits[index];
    const dialog = $("detail");
    $("detail-title").textContent = hit.file_name;
    $("detail-prev").disabled = index === 0;
    $("detail-next").disabled = index === state.hits.length - 1;
    $("detail-error").hidden = true;
    const img = $("detail-img");
    img.alt = hit.file_name;
    img.onerror = () => {
      // Browsers show no TIFF; the thumbnail stands in.
      img.onerror = null;
      if (hit.thumbnail_uri) img.src = hit.thumbnail_url;
    };
    img.src = hit.original_url;
    $("detail-original").href = hit.original_url;
    renderDetailTags(hit, []);
    $("detail-meta").replaceChildren();
    if (!dialog.open) dialog.showModal();
    try {
      const doc = await api(datasetPath(`/files/${enc(hit.id)}`));
      if (state.detail !== index) return;
      hit.tags = doc.tags;
      renderDetailTags(hit, doc.tags_detail || []);
      renderMeta(doc, hit);
    } catch (err) {
      showDetailError(err.message);
    }
  }

  function showDetailError(message) {
    $("detail-error").textContent = message;
    $("detail-error").hidden = false;
  }

  function renderDetailTags(hit, detail) {
    const scores = new Map(detail.map((t) => [t.name, t]));
    $("detail-ai-tags").replaceChildren(
      ...(hit.tags.ai.length ? hit.tags.ai.map((t) => {
        const d = scores.get(t);
        return h("li", { class: "tag", title: d && d.state ? `state: ${d.state}` : null }, t,
          d && typeof d.score === "number" ? h("span", { class: "tag-score" }, ` ${d.score.toFixed(2)}`) : null,
          d && d.state ? h("span", { class: "tag-score" }, ` (${d.state})`) : null);
      }) : [h("li", { class: "muted" }, "none")]),
    );
    const canEdit = state.dataset.can_edit;
    $("detail-user-tags").replaceChildren(
      ...(hit.tags.user.length ? hit.tags.user.map((t) =>
        h("li", { class: "tag user" }, t,
          canEdit ? h("button", { type: "button", "aria-label": `remove user tag ${t}`, onclick: () => detailTag(t, false) }, "×") : null),
      ) : [h("li", { class: "muted" }, "none")]),
    );
  }

  function renderMeta(doc, hit) {
    const rows = [
      ["Path", doc.uri],
      ["Key", doc.key],
      ["Version", doc.dataset_version],
      ["Status", doc.status === "ok" ? "ok" : `${doc.status}: ${doc.error || ""}`],
      ["Pixels", doc.width ? `${doc.width} × ${doc.height}` : ""],
      ["Format", [doc.format, doc.mode].filter(Boolean).join(" ")],
      ["Size", formatBytes(doc.size)],
      ["Modified", formatTime(doc.mtime)],
      ["Indexed", formatTime(doc.indexed_at)],
      ["Score", state.ranked ? hit.score.toFixed(4) : ""],
      ["Model", doc.model],
      ["Fingerprint", doc.fingerprint],
      ["Id", doc.id],
    ];
    $("detail-meta").replaceChildren(
      ...rows.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [h("dt", null, k), h("dd", null, String(v))]),
    );
  }

  async function detailTag(tag, add) {
    const hit = state.hits[state.detail];
    try {
      await changeTags([hit.id], [tag], add);
      renderDetailTags(hit, []);
      const doc = await api(datasetPath(`/files/${enc(hit.id)}`));
      renderDetailTags(hit, doc.tags_detail || []);
    } catch (err) {
      showDetailError(err.message);
    }
  }

  function moveDetail(step) {
    const next = state.detail + step;
    if (next >= 0 && next < state.hits.length) openDetail(next);
  }

  // ------------------------------------------------------------------------------------------
  // query by image: an upload or an indexed image

  function renderQueryChip() {
    const box = $("query-chip");
    let chip = null;
    if (state.upload) {
      const url = URL.createObjectURL(state.upload);
      chip = h("span", { class: "chip" }, h("img", { src: url, alt: "" }),
        `Similar to ${state.upload.name || "the uploaded image"}`,
        h("button", { type: "button", "aria-label": "clear image query", onclick: clearImageQuery }, "×"));
    } else if (state.similar) {
      chip = h("span", { class: "chip" },
        h("img", { src: state.similar.thumbnail_url, alt: "" }), `Similar to ${state.similar.file_name}`,
        h("button", { type: "button", "aria-label": "clear image query", onclick: clearImageQuery }, "×"));
    }
    box.replaceChildren(...(chip ? [chip] : []));
    box.hidden = !chip;
    $("text").disabled = Boolean(chip);
  }

  function clearImageQuery() {
    state.upload = null;
    state.similar = null;
    $("image").value = "";
    renderQueryChip();
    search();
  }

  function useUpload(file) {
    if (!file) return;
    if (file.size > MAX_UPLOAD) {
      showFormError(`${file.name} is larger than 20 MiB; pick a smaller image.`);
      return;
    }
    state.upload = file;
    state.similar = null;
    renderQueryChip();
    search();
  }

  function findSimilar(hit) {
    state.similar = { uri: hit.uri, file_name: hit.file_name, thumbnail_url: hit.thumbnail_url };
    state.upload = null;
    $("image").value = "";
    renderQueryChip();
    if ($("detail").open) $("detail").close();
    window.scrollTo(0, 0);
    search();
  }

  // ------------------------------------------------------------------------------------------
  // wiring

  function setView(view) {
    state.view = view;
    $("view-gallery").setAttribute("aria-pressed", String(view === "gallery"));
    $("view-list").setAttribute("aria-pressed", String(view === "list"));
    renderResults();
  }

  function resetForm({ thenSearch = true } = {}) {
    $("search").reset();
    for (const input of Object.values(tagInputs)) input.set([]);
    state.upload = null;
    state.similar = null;
    renderQueryChip();
    if (thenSearch) search();
  }

  function wire() {
    $("search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      search();
    });
    $("reset-form").addEventListener("click", () => resetForm());
    $("dataset").addEventListener("change", (ev) => selectDataset(ev.target.value, null));
    $("version").addEventListener("change", (ev) => {
      state.version = ev.target.value;
      clearSelection();
      remember();
      showDatasetInfo();
      loadRun();
      search();
    });
    $("view-gallery").addEventListener("click", () => setView("gallery"));
    $("view-list").addEventListener("click", () => setView("list"));
    $("image").addEventListener("change", (ev) => useUpload(ev.target.files[0]));
    $("upload-label").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        $("image").click();
      }
    });
    $("dsl").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        search();
      }
    });
    $("dsl").addEventListener("input", () => showDslError(null));
    $("dsl-help-toggle").addEventListener("click", (ev) => {
      ev.preventDefault();
      $("dsl-help").hidden = !$("dsl-help").hidden;
    });
    const panel = $("search");
    panel.addEventListener("dragover", (ev) => ev.preventDefault());
    panel.addEventListener("drop", (ev) => {
      const file = ev.dataTransfer && ev.dataTransfer.files[0];
      if (file) {
        ev.preventDefault();
        useUpload(file);
      }
    });
    document.addEventListener("paste", (ev) => {
      const file = Array.from(ev.clipboardData ? ev.clipboardData.files : []).find((f) => f.type.startsWith("image/"));
      if (file) useUpload(file);
    });

    const results = $("results");
    results.addEventListener("click", onResultsClick);
    results.addEventListener("keydown", onResultsKey);
    // Keeps shift-click from selecting the page's text.
    results.addEventListener("mousedown", (ev) => {
      if (ev.shiftKey) ev.preventDefault();
    });
    $("more").addEventListener("click", () => search({ more: true }));

    $("bulk-add").addEventListener("click", () => bulkTag(true));
    $("bulk-remove").addEventListener("click", () => bulkTag(false));
    $("bulk-tag").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        bulkTag(true);
      }
    });
    $("bulk-similar").addEventListener("click", () => {
      const hit = state.hits.find((x) => state.selected.has(x.id));
      if (hit) findSimilar(hit);
    });
    $("bulk-export").addEventListener("click", async () => {
      try {
        await api(datasetPath("/export"), { method: "POST", json: { ids: selectedIds() } });
      } catch (err) {
        toast(err.message);
      }
    });
    $("select-all").addEventListener("click", () => {
      state.hits.forEach((hit) => state.selected.add(hit.id));
      renderSelection();
    });
    $("select-none").addEventListener("click", clearSelection);

    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail-prev").addEventListener("click", () => moveDetail(-1));
    $("detail-next").addEventListener("click", () => moveDetail(1));
    $("detail-similar").addEventListener("click", () => findSimilar(state.hits[state.detail]));
    $("detail").addEventListener("keydown", (ev) => {
      if (ev.target.tagName === "INPUT") return;
      if (ev.key === "ArrowLeft") moveDetail(-1);
      if (ev.key === "ArrowRight") moveDetail(1);
    });
    $("detail").addEventListener("click", (ev) => {
      if (ev.target === $("detail")) $("detail").close(); // a click on the backdrop
    });
    $("detail-tag-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const tag = $("detail-tag").value.trim();
      if (!tag) return;
      $("detail-tag").value = "";
      detailTag(tag, true);
    });
  }

  followAirflowTheme();
  wire();
  loadDatasets();
})();
