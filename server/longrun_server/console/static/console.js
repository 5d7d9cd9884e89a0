// The longrun operations console (docs/console.md). No build step: this file
// is served as is. It calls the gateway's own REST routes (/v1/...) with the
// credential the user pasted, kept in this tab's sessionStorage and sent as
// a header (never a cookie), so it sees what the API lets that principal see.
// Every value from the server is written with textContent, never as HTML.
"use strict";
(function () {
  const STORE_KEY = "longrun.console.credential";
  // Long-polled WaitOperation calls in flight per page at most (browsers
  // allow 6 connections per origin; the rest stay free for clicks).
  const MAX_LIVE = 3;
  // Wait only returns early when an operation is done, so progress moves
  // at least this often.
  const LIST_WAIT = "5s";
  const DETAIL_WAIT = "2s";

  function byId(id) {
    return document.getElementById(id);
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // ---- credentials ----

  function credential() {
    try {
      const value = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
      return value && typeof value.value === "string" && value.value ? value : null;
    } catch (_) {
      return null;
    }
  }

  function requestHeaders(json) {
    const headers = new Headers();
    if (json) headers.set("Content-Type", "application/json");
    const c = credential();
    if (c) {
      if (c.kind === "bearer") headers.set("Authorization", "Bearer " + c.value);
      else headers.set("x-goog-api-key", c.value);
    }
    return headers;
  }

  function renderSignin() {
    const c = credential();
    byId("signin-state").textContent = c
      ? "Signed in with " + (c.kind === "bearer" ? "an ID token" : "an API key") +
        " (kept in this tab only)."
      : "Not signed in: requests are sent without credentials.";
    byId("signout-button").disabled = !c;
  }

  function setupSignin(onChange) {
    const c = credential();
    if (c) byId("credential-kind").value = c.kind;
    renderSignin();
    byId("signin-form").addEventListener("submit", function (event) {
      event.preventDefault();
      const value = byId("credential").value.trim();
      if (value) {
        sessionStorage.setItem(
          STORE_KEY,
          JSON.stringify({ kind: byId("credential-kind").value, value: value })
        );
      } else {
        sessionStorage.removeItem(STORE_KEY);
      }
      byId("credential").value = "";
      renderSignin();
      onChange();
    });
    byId("signout-button").addEventListener("click", function () {
      sessionStorage.removeItem(STORE_KEY);
      renderSignin();
      byId("credential").focus();
      onChange();
    });
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(http, status, message, reason) {
      super(message);
      this.http = http;
      this.status = status;
      this.reason = reason;
    }
  }

  async function api(method, path, body, signal) {
    const response = await fetch(path, {
      method: method,
      headers: requestHeaders(body !== undefined),
      body: body !== undefined ? JSON.stringify(body) : undefined,
      credentials: "omit",
      cache: "no-store",
      signal: signal,
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const info = (error.details || []).find(function (d) {
        return d && d.reason;
      });
      throw new ApiError(
        response.status,
        error.status || "HTTP " + response.status,
        error.message || text.slice(0, 300),
        info ? info.reason : ""
      );
    }
    return data || {};
  }

  function segments(name) {
    return name.split("/").map(encodeURIComponent).join("/");
  }

  function apiPath(name) {
    return "/v1/" + segments(name);
  }

  function pagePath(name) {
    return "/console/" + segments(name);
  }

  // ---- messages ----

  function showError(error) {
    const box = byId("error");
    box.replaceChildren();
    if (error instanceof ApiError) {
      box.append(el("p", error.http + " " + error.status + ": " + error.message, "error-title"));
      if (error.http === 401) {
        box.append(
          el(
            "p",
            "Sign in: paste an API key (from `longrun-server keys create` or the ApiKeys " +
              "API) or an OIDC ID token under Credentials, then Sign in. It is kept in " +
              "this tab's sessionStorage only and sent as a header."
          )
        );
      } else if (error.http === 403) {
        box.append(
          el(
            "p",
            "Permission denied: these credentials may not do this in this project. " +
              "Ask the project's admin for a role, or sign in with other credentials."
          )
        );
      }
    } else {
      box.append(el("p", "Error: " + String((error && error.message) || error), "error-title"));
    }
    box.hidden = false;
  }

  function clearError() {
    const box = byId("error");
    box.hidden = true;
    box.replaceChildren();
  }

  function announce(text) {
    byId("live").textContent = text;
  }

  // ---- operations ----

  function metadataOf(op) {
    return op.metadata || {};
  }

  function stateOf(op) {
    const state = metadataOf(op).state;
    if (state) return state;
    if (op.done) return op.error ? "FAILED" : "SUCCEEDED";
    return "STATE_UNSPECIFIED";
  }

  function progressOf(op) {
    const value = Number(metadataOf(op).progressPercent || 0);
    return Number.isFinite(value) ? Math.max(0, Math.min(100, value)) : 0;
  }

  function shortId(name) {
    return name.split("/").pop();
  }

  function when(text) {
    if (!text) return "";
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? String(text) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  // google.rpc.Code names, for the attempts timeline.
  const RPC_CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
    "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

  function seconds(start, end) {
    const ms = new Date(end).getTime() - new Date(start).getTime();
    return Number.isNaN(ms) ? "" : " (" + (ms / 1000).toFixed(ms < 10000 ? 2 : 0) + " s)";
  }

  // One attempt (JobMetadata.attempts[i]) as a timeline item.
  function attemptItem(attempt) {
    const item = el("li");
    item.className = "attempt";
    const start = el("time", when(attempt.startTime));
    start.dateTime = attempt.startTime || "";
    item.append(el("span", "Attempt " + (attempt.attempt || 0) +
      (attempt.worker ? " on " + attempt.worker : "") + ": "), start);
    if (attempt.endTime) {
      const end = el("time", when(attempt.endTime));
      end.dateTime = attempt.endTime;
      const code = attempt.code || 0;
      const outcome = code === 0 ? "succeeded" : (RPC_CODES[code] || "code " + code);
      item.append(el("span", " to "), end, el("span", seconds(attempt.startTime, attempt.endTime)),
        el("span", " — " + outcome + (attempt.message ? ": " + attempt.message : ""),
          code === 0 ? "attempt-ok" : "attempt-error"));
      item.dataset.outcome = outcome;
    } else {
      item.append(el("span", " — running"));
      item.dataset.outcome = "running";
    }
    return item;
  }

  function labelsText(labels) {
    return Object.keys(labels || {})
      .sort()
      .map(function (key) {
        return key + "=" + labels[key];
      })
      .join(", ");
  }

  function stateBadge(op) {
    const state = stateOf(op);
    return el("span", state, "state state-" + state.toLowerCase().replace(/[^a-z_]/g, ""));
  }

  // Keeps up to MAX_LIVE WaitOperation calls going over `names` (round
  // robin) until each is done; stop() aborts them.
  class Poller {
    constructor(names, timeout, onUpdate, onGone) {
      this.queue = names.slice();
      this.timeout = timeout;
      this.onUpdate = onUpdate;
      this.onGone = onGone;
      this.stopped = false;
      this.controller = new AbortController();
      for (let i = 0; i < Math.min(MAX_LIVE, this.queue.length); i++) this.run();
    }

    stop() {
      this.stopped = true;
      this.controller.abort();
    }

    async run() {
      let failures = 0;
      while (!this.stopped && this.queue.length) {
        const name = this.queue.shift();
        try {
          const op = await api("POST", apiPath(name) + ":wait", { timeout: this.timeout },
            this.controller.signal);
          if (this.stopped) return;
          failures = 0;
          this.onUpdate(op);
          if (!op.done) this.queue.push(name);
        } catch (error) {
          if (this.stopped) return;
          if (error instanceof ApiError && [401, 403, 404].includes(error.http)) {
            this.onGone(name, error);
            continue;
          }
          failures += 1;
          this.queue.push(name);
          await new Promise(function (resolve) {
            setTimeout(resolve, Math.min(30000, 500 * 2 ** failures));
          });
        }
      }
    }
  }

  // ---- the list page ----

  function listParams() {
    const query = new URLSearchParams(location.search);
    return {
      project: query.get("project") || "",
      filter: query.get("filter") || "",
      pageSize: query.get("pageSize") || "25",
      pageToken: query.get("pageToken") || "",
    };
  }

  function listUrl(params) {
    const query = new URLSearchParams();
    if (params.project) query.set("project", params.project);
    if (params.filter) query.set("filter", params.filter);
    if (params.pageSize && params.pageSize !== "25") query.set("pageSize", params.pageSize);
    if (params.pageToken) query.set("pageToken", params.pageToken);
    const text = query.toString();
    return "/console/" + (text ? "?" + text : "");
  }

  function setupList() {
    let generation = 0;
    let poller = null;
    let nextToken = "";

    function row(op) {
      const tr = document.createElement("tr");
      tr.dataset.name = op.name;
      const nameCell = document.createElement("th");
      nameCell.scope = "row";
      const link = el("a", shortId(op.name));
      link.href = pagePath(op.name);
      link.title = op.name;
      nameCell.append(link);
      tr.append(nameCell, el("td", metadataOf(op).task || ""), el("td"), el("td"),
        el("td", when(metadataOf(op).createTime)), el("td", labelsText(metadataOf(op).labels)));
      fill(tr, op);
      return tr;
    }

    function fill(tr, op) {
      const cells = tr.children;
      cells[2].replaceChildren(stateBadge(op));
      cells[2].dataset.state = stateOf(op);
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = progressOf(op);
      bar.setAttribute("aria-label", "progress of " + shortId(op.name));
      cells[3].replaceChildren(bar, el("span", " " + progressOf(op) + "%", "percent"));
    }

    function update(op) {
      for (const tr of byId("rows").children) {
        if (tr.dataset.name !== op.name) continue;
        const before = tr.children[2].dataset.state;
        fill(tr, op);
        if (before !== stateOf(op)) announce(shortId(op.name) + " is now " + stateOf(op));
      }
    }

    function gone(name, error) {
      for (const tr of byId("rows").children) {
        if (tr.dataset.name === name) {
          tr.children[2].replaceChildren(el("span", error.http === 404 ? "DELETED" : error.status));
          tr.children[2].dataset.state = "";
        }
      }
    }

    async function load() {
      const params = listParams();
      byId("project").value = params.project;
      byId("filter").value = params.filter;
      byId("page-size").value = ["10", "25", "50"].includes(params.pageSize) ? params.pageSize : "25";
      const mine = ++generation;
      if (poller) poller.stop();
      poller = null;
      byId("summary").textContent = "Loading…";
      byId("next-page").disabled = true;
      const query = new URLSearchParams({ pageSize: byId("page-size").value });
      if (params.filter) query.set("filter", params.filter);
      if (params.pageToken) query.set("pageToken", params.pageToken);
      const base = params.project
        ? "/v1/projects/" + encodeURIComponent(params.project) + "/operations"
        : "/v1/operations";
      try {
        const data = await api("GET", base + "?" + query.toString());
        if (mine !== generation) return;
        clearError();
        const ops = data.operations || [];
        byId("rows").replaceChildren.apply(byId("rows"), ops.map(row));
        nextToken = data.nextPageToken || "";
        byId("next-page").disabled = !nextToken;
        byId("summary").textContent =
          ops.length + " operation" + (ops.length === 1 ? "" : "s") +
          (params.project ? " in projects/" + params.project : "") +
          (params.filter ? " matching the filter" : "") +
          (params.pageToken ? " (a later page)" : "") + ", newest first";
        const live = ops.filter(function (op) { return !op.done; }).map(function (op) { return op.name; });
        if (live.length) poller = new Poller(live, LIST_WAIT, update, gone);
      } catch (error) {
        if (mine !== generation) return;
        byId("rows").replaceChildren();
        byId("summary").textContent = "No operations shown.";
        showError(error);
      }
    }

    function go(params) {
      history.pushState(null, "", listUrl(params));
      load();
    }

    byId("filter-form").addEventListener("submit", function (event) {
      event.preventDefault();
      go({
        project: byId("project").value.trim(),
        filter: byId("filter").value.trim(),
        pageSize: byId("page-size").value,
        pageToken: "",
      });
    });
    byId("next-page").addEventListener("click", function () {
      if (nextToken) go(Object.assign(listParams(), { pageToken: nextToken }));
    });
    byId("first-page").addEventListener("click", function () {
      go(Object.assign(listParams(), { pageToken: "" }));
    });
    window.addEventListener("popstate", load);
    setupSignin(load);
    load();
  }

  // ---- an operation's page ----

  function confirmAction(text, yes) {
    return new Promise(function (resolve) {
      const dialog = byId("confirm");
      byId("confirm-text").textContent = text;
      byId("confirm-yes").textContent = yes;
      dialog.returnValue = "";
      dialog.addEventListener("close", function () { resolve(dialog.returnValue === "yes"); },
        { once: true });
      dialog.showModal();
    });
  }

  function setupOperation() {
    const name = decodeURIComponent(location.pathname.slice("/console/".length));
    let poller = null;
    let deleted = false;
    byId("op-name").textContent = "Operation " + shortId(name);
    byId("op-name").title = name;
    document.title = shortId(name) + " · longrun console";

    function render(op) {
      const meta = metadataOf(op);
      const before = byId("state").textContent;
      byId("state").replaceChildren(stateBadge(op));
      if (before !== "…" && before !== stateOf(op)) announce(shortId(name) + " is now " + stateOf(op));
      byId("task").textContent = meta.task || "";
      byId("progress").value = progressOf(op);
      byId("progress-text").textContent =
        progressOf(op) + "%" + (meta.progressMessage ? " — " + meta.progressMessage : "");
      byId("attempts").textContent =
        (meta.attempt || 0) + (meta.maxAttempts ? " of at most " + meta.maxAttempts : "");
      byId("cancel-requested").textContent = meta.cancelRequested ? "yes" : "no";
      byId("labels").textContent = labelsText(meta.labels) || "none";
      const trace = meta.traceId || meta.trace_id || "";
      byId("trace-id").textContent = trace || "none recorded";
      const steps = [
        ["Created", meta.createTime],
        ["Started" + (meta.attempt ? " (attempt " + meta.attempt + ")" : ""), meta.startTime],
        ["Last update", meta.updateTime],
        ["Ended", meta.endTime],
        ["Expires", meta.expireTime],
      ].filter(function (step) { return step[1]; });
      byId("timeline").replaceChildren.apply(byId("timeline"), steps.map(function (step) {
        const item = el("li");
        const time = el("time", when(step[1]));
        time.dateTime = step[1];
        item.append(el("span", step[0] + ": "), time);
        return item;
      }));
      const attempts = meta.attempts || [];
      byId("attempt-timeline").replaceChildren.apply(byId("attempt-timeline"),
        attempts.map(attemptItem));
      const first = attempts.length ? attempts[0].attempt || 0 : 0;
      byId("attempts-note").textContent = !attempts.length
        ? "No attempt has started."
        : first > 1 ? "Earlier attempts than " + first + " are not kept." : "";
      byId("result").textContent = op.error
        ? JSON.stringify({ error: op.error }, null, 2)
        : op.response
          ? JSON.stringify({ response: op.response }, null, 2)
          : "Not done yet.";
      byId("raw-metadata").textContent = JSON.stringify(meta, null, 2);
      byId("cancel").disabled = Boolean(op.done);
      if (op.done && poller) {
        poller.stop();
        poller = null;
      }
    }

    function follow(op) {
      if (!op.done && !poller && !deleted) {
        poller = new Poller([name], DETAIL_WAIT, render, function (_, error) {
          poller = null;
          showError(error);
        });
      }
    }

    async function load() {
      if (poller) poller.stop();
      poller = null;
      try {
        const op = await api("GET", apiPath(name));
        clearError();
        render(op);
        follow(op);
      } catch (error) {
        showError(error);
      }
    }

    byId("cancel").addEventListener("click", async function () {
      const ok = await confirmAction(
        "Cancel " + name + "? The worker is asked to stop; the operation ends CANCELLED.",
        "Yes, cancel it"
      );
      if (!ok) {
        byId("cancel").focus();
        return;
      }
      try {
        await api("POST", apiPath(name) + ":cancel", {});
        announce("Cancellation requested for " + shortId(name));
        const op = await api("GET", apiPath(name));
        render(op);
        follow(op);
      } catch (error) {
        showError(error);
      }
      byId("cancel").focus();
    });

    byId("delete").addEventListener("click", async function () {
      const ok = await confirmAction(
        "Delete " + name + "? Its record and result are removed; this cannot be undone.",
        "Yes, delete it"
      );
      if (!ok) {
        byId("delete").focus();
        return;
      }
      try {
        await api("DELETE", apiPath(name));
        deleted = true;
        if (poller) poller.stop();
        poller = null;
        clearError();
        byId("state").textContent = "DELETED";
        byId("cancel").disabled = true;
        byId("delete").disabled = true;
        announce(shortId(name) + " was deleted");
        const back = byId("live");
        const link = el("a", "Back to the operations");
        link.href = "/console/";
        back.append(" ", link);
        link.focus();
      } catch (error) {
        showError(error);
        byId("delete").focus();
      }
    });

    setupSignin(load);
    load();
  }

  // ---- the queues page ----

  // Counts and states are read again this often (ms), without a reload.
  const QUEUES_POLL = 3000;
  const UPDATE_PERMISSION = "longrun.queues.update";

  function projectParam(fallback) {
    const value = new URLSearchParams(location.search).get("project");
    return value === null ? fallback : value.trim();
  }

  function queueId(name) {
    return name.split("/").pop();
  }

  function countText(stats, field) {
    const value = Number((stats || {})[field] || 0);
    return String(value) + ((stats || {}).capped && value > 0 ? "+" : "");
  }

  function limitsText(limits) {
    limits = limits || {};
    const parts = [];
    if (limits.maxConcurrentDispatches) parts.push("at most " + limits.maxConcurrentDispatches + " running");
    if (limits.maxConcurrentPerKey) parts.push(limits.maxConcurrentPerKey + " per key");
    return parts.length ? parts.join(", ") : "none";
  }

  function retryText(retry) {
    retry = retry || {};
    const parts = [];
    if (retry.maxAttempts) parts.push(retry.maxAttempts + " attempts");
    if (retry.minBackoff || retry.maxBackoff) {
      parts.push("backoff " + (retry.minBackoff || "the task's") + " to " + (retry.maxBackoff || "the task's"));
    }
    if (retry.maxDoublings !== undefined) parts.push(retry.maxDoublings + " doublings");
    if (retry.maxRetryDuration) parts.push("for at most " + retry.maxRetryDuration);
    return parts.length ? parts.join(", ") : "the task's own policy";
  }

  function setupQueues() {
    let project = projectParam("default") || "default";
    let timer = null;
    let generation = 0;
    let mayUpdate = false;
    let pollError = false;
    const states = {};

    function queuesPath() {
      return "/v1/projects/" + encodeURIComponent(project) + "/queues";
    }

    async function permissions() {
      try {
        const data = await api("POST", queuesPath() + "/default:testIamPermissions",
          { permissions: [UPDATE_PERMISSION] });
        return (data.permissions || []).includes(UPDATE_PERMISSION);
      } catch (_) {
        return false;
      }
    }

    function setButton(button, queue) {
      const paused = queue.state === "PAUSED";
      button.textContent = paused ? "Resume" : "Pause";
      button.className = paused ? "resume" : "pause";
      button.setAttribute("aria-label", (paused ? "Resume queue " : "Pause queue ") + queueId(queue.name));
      button.disabled = !mayUpdate;
      if (mayUpdate) button.removeAttribute("title");
      else button.title = "Needs " + UPDATE_PERMISSION + " (admin) on this project";
    }

    function fill(tr, queue) {
      const state = queue.state || "STATE_UNSPECIFIED";
      const cells = tr.children;
      tr.dataset.state = state;
      cells[1].textContent = state;
      cells[1].className = "state state-" + state.toLowerCase().replace(/[^a-z_]/g, "");
      cells[2].textContent = countText(queue.stats, "waitingCount");
      cells[3].textContent = countText(queue.stats, "runningCount");
      cells[4].textContent = limitsText(queue.rateLimits);
      cells[5].textContent = retryText(queue.retryConfig);
      setButton(cells[6].firstChild, queue);
    }

    function row(queue) {
      const tr = document.createElement("tr");
      tr.dataset.name = queue.name;
      const nameCell = document.createElement("th");
      nameCell.scope = "row";
      nameCell.textContent = queueId(queue.name);
      nameCell.title = queue.name;
      tr.append(nameCell, el("td"), el("td", "", "count"), el("td", "", "count"), el("td"),
        el("td"), el("td"));
      const button = el("button");
      button.type = "button";
      button.addEventListener("click", function () {
        change(queue.name, tr.dataset.state === "PAUSED" ? "resume" : "pause");
      });
      tr.children[6].append(button);
      fill(tr, queue);
      return tr;
    }

    function render(queues) {
      const body = byId("rows");
      const shown = Array.from(body.children).map(function (tr) { return tr.dataset.name; });
      const same = shown.length === queues.length &&
        queues.every(function (q, i) { return shown[i] === q.name; });
      // The same queues: update the cells in place (focus and screen readers stay put).
      if (same) queues.forEach(function (q, i) { fill(body.children[i], q); });
      else body.replaceChildren.apply(body, queues.map(row));
      for (const queue of queues) {
        const before = states[queue.name];
        if (before && before !== queue.state) announce("Queue " + queueId(queue.name) + " is now " + queue.state);
        states[queue.name] = queue.state;
      }
      byId("summary").textContent = queues.length + " queue" + (queues.length === 1 ? "" : "s") +
        " in projects/" + project + ": jobs waiting and running now, refreshed every " +
        QUEUES_POLL / 1000 + " s";
    }

    async function refresh(mine) {
      try {
        const data = await api("GET", queuesPath() + "?readMask=stats&pageSize=100");
        if (mine !== generation) return;
        // A poll clears only its own error: an action's stays until the next action.
        if (pollError) clearError();
        pollError = false;
        render(data.queues || []);
        byId("queues").dataset.refreshes = String(Number(byId("queues").dataset.refreshes || 0) + 1);
      } catch (error) {
        if (mine !== generation) return;
        showError(error);
        pollError = true;
        if (error instanceof ApiError && [401, 403].includes(error.http)) {
          byId("rows").replaceChildren();
          byId("summary").textContent = "No queues shown.";
        }
      }
      if (mine === generation) timer = setTimeout(function () { refresh(mine); }, QUEUES_POLL);
    }

    async function load() {
      const mine = ++generation;
      if (timer) clearTimeout(timer);
      byId("project").value = project;
      byId("dead-letters-link").href = "/console/dead-letters?project=" + encodeURIComponent(project);
      byId("summary").textContent = "Loading…";
      byId("rows").replaceChildren();
      mayUpdate = await permissions();
      if (mine !== generation) return;
      await refresh(mine);
    }

    async function change(name, verb) {
      const ok = await confirmAction(
        verb === "pause"
          ? "Pause " + name + "? No new attempt of its jobs starts until it is resumed; running ones finish."
          : "Resume " + name + "? Its waiting jobs are dispatched again.",
        verb === "pause" ? "Yes, pause it" : "Yes, resume it"
      );
      const button = function () {
        const tr = Array.from(byId("rows").children).find(function (r) { return r.dataset.name === name; });
        return tr ? tr.querySelector("button") : null;
      };
      if (!ok) {
        if (button()) button().focus();
        return;
      }
      try {
        const queue = await api("POST", "/v1/" + segments(name) + ":" + verb, {});
        clearError();
        pollError = false;
        announce("Queue " + queueId(name) + " is now " + queue.state);
        states[name] = queue.state;
        await refresh(generation);
      } catch (error) {
        showError(error);
        pollError = false;
      }
      if (button()) button().focus();
    }

    byId("project-form").addEventListener("submit", function (event) {
      event.preventDefault();
      project = byId("project").value.trim() || "default";
      history.pushState(null, "", "/console/queues?project=" + encodeURIComponent(project));
      load();
    });
    window.addEventListener("popstate", function () {
      project = projectParam("default") || "default";
      load();
    });
    setupSignin(load);
    load();
  }

  // ---- the dead letters page ----

  const DEAD_LETTERS_POLL = 5000;

  function setupDeadLetters() {
    let generation = 0;
    let timer = null;
    let nextToken = "";

    function params() {
      const query = new URLSearchParams(location.search);
      return {
        project: (query.get("project") || "").trim(),
        pageSize: query.get("pageSize") || "25",
        pageToken: query.get("pageToken") || "",
      };
    }

    function url(p) {
      const query = new URLSearchParams();
      if (p.project) query.set("project", p.project);
      if (p.pageSize && p.pageSize !== "25") query.set("pageSize", p.pageSize);
      if (p.pageToken) query.set("pageToken", p.pageToken);
      const text = query.toString();
      return "/console/dead-letters" + (text ? "?" + text : "");
    }

    function row(letter) {
      const tr = document.createElement("tr");
      tr.dataset.name = letter.name || "";
      const opCell = document.createElement("th");
      opCell.scope = "row";
      const operation = letter.operation || "";
      // Only a dead letter attributed to a stored operation links to it.
      if (operation && !String(letter.name || "").startsWith("projects/-/")) {
        const link = el("a", shortId(operation));
        link.href = pagePath(operation);
        link.title = operation;
        opCell.append(link);
      } else {
        opCell.append(el("span", operation + " (not found)"));
      }
      const time = el("time", when(letter.deadLetterTime));
      if (letter.deadLetterTime) time.dateTime = letter.deadLetterTime;
      const timeCell = el("td");
      timeCell.append(time);
      tr.append(
        opCell,
        el("td", letter.task || ""),
        el("td", String(letter.attempt || 0)),
        el("td", letter.deliveryCount ? String(letter.deliveryCount) : "none recorded"),
        el("td", letter.reason || ""),
        timeCell,
        el("td", letter.queue ? queueId(letter.queue) : "")
      );
      if (letter.queue) tr.lastChild.title = letter.queue;
      return tr;
    }

    async function load() {
      const p = params();
      const mine = ++generation;
      if (timer) clearTimeout(timer);
      byId("project").value = p.project;
      byId("page-size").value = ["10", "25", "50"].includes(p.pageSize) ? p.pageSize : "25";
      const query = new URLSearchParams({ pageSize: byId("page-size").value });
      if (p.pageToken) query.set("pageToken", p.pageToken);
      const parent = "projects/" + (p.project ? encodeURIComponent(p.project) : "-");
      try {
        const data = await api("GET", "/v1/" + parent + "/deadLetters?" + query.toString());
        if (mine !== generation) return;
        clearError();
        const letters = data.deadLetters || [];
        const before = byId("rows").children.length;
        byId("rows").replaceChildren.apply(byId("rows"), letters.map(row));
        nextToken = data.nextPageToken || "";
        byId("next-page").disabled = !nextToken;
        byId("summary").textContent = letters.length + " dead letter" +
          (letters.length === 1 ? "" : "s") +
          (p.project ? " in projects/" + p.project : " in every project you may see") +
          (p.pageToken ? " (a later page)" : "") + ", newest first";
        if (before && letters.length !== before) announce(letters.length + " dead letters shown");
      } catch (error) {
        if (mine !== generation) return;
        byId("rows").replaceChildren();
        byId("summary").textContent = "No dead letters shown.";
        showError(error);
      }
      // The first page follows new dead letters without a reload.
      if (mine === generation && !p.pageToken) timer = setTimeout(load, DEAD_LETTERS_POLL);
    }

    function go(p) {
      history.pushState(null, "", url(p));
      load();
    }

    byId("project-form").addEventListener("submit", function (event) {
      event.preventDefault();
      go({ project: byId("project").value.trim(), pageSize: byId("page-size").value, pageToken: "" });
    });
    byId("next-page").addEventListener("click", function () {
      if (nextToken) go(Object.assign(params(), { pageToken: nextToken }));
    });
    byId("first-page").addEventListener("click", function () {
      go(Object.assign(params(), { pageToken: "" }));
    });
    byId("refresh").addEventListener("click", load);
    window.addEventListener("popstate", load);
    setupSignin(load);
    load();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const page = document.body.dataset.page;
    if (page === "list") setupList();
    else if (page === "operation") setupOperation();
    else if (page === "queues") setupQueues();
    else if (page === "dead-letters") setupDeadLetters();
  });
})();
