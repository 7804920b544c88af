/* specgate admin dashboard: sign-in, fragments, live updates, actions.
 *
 * The admin key lives in sessionStorage (this tab only) and goes out as a bearer token with
 * every request. Fragments are server-rendered HTML (Jinja2) fetched with the key; the event
 * stream is read with fetch() because EventSource cannot send an Authorization header. Every
 * action is a call of the REST API, with an Idempotency-Key so a double click acts once.
 */
(() => {
  "use strict";

  const KEY = "specgate.adminKey";
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const page = document.body.dataset.page;
  const state = { key: sessionStorage.getItem(KEY), me: null, html: new Map(), timer: null,
                  stream: null, started: false };

  // ---- API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function request(path, { method = "GET", body, key = state.key, accept } = {}) {
    const headers = { Authorization: `Bearer ${key}` };
    if (accept) headers.Accept = accept;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["Idempotency-Key"] = crypto.randomUUID();
    }
    const response = await fetch(path, { method, headers, cache: "no-store",
                                          body: body === undefined ? undefined : JSON.stringify(body) });
    if (!response.ok) {
      let code = "http_error", message = `${response.status} ${response.statusText}`;
      try {
        const error = (await response.json()).error || {};
        code = error.code || code; message = error.message || message;
      } catch (_) { /* not JSON */ }
      if (response.status === 401 && key === state.key) signOut("Your key is no longer valid; sign in again.");
      throw new ApiError(response.status, code, message);
    }
    return response;
  }

  // ---- sign-in ---------------------------------------------------------------------------

  function showSignedIn(signedIn) {
    $("#login").hidden = signedIn;
    $("#app").hidden = !signedIn;
    $$("[data-signed-in]").forEach((el) => { el.hidden = !signedIn; });
  }

  async function signIn(key) {
    const response = await request("/v1/admin/me", { key });
    state.me = await response.json();
    state.key = key;
    sessionStorage.setItem(KEY, key);
    $("#who-tenant").textContent = `tenant ${state.me.tenant}`;
    const tenants = $("#f-tenant");
    if (tenants && tenants.options.length === 1) {
      state.me.tenants.forEach((t) => tenants.add(new Option(t, t)));
      tenants.value = new URLSearchParams(location.search).get("tenant") || "";
    }
    showSignedIn(true);
    start();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    state.key = null;
    if (state.stream) state.stream.abort();
    state.started = false;
    clearTimeout(state.timer);
    state.html.clear();
    $$("[data-fragment]").forEach((el) => { el.innerHTML = '<p class="loading">Loading…</p>'; });
    showSignedIn(false);
    $("#login-error").textContent = message || "";
    $("#api-key").focus();
  }

  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#api-key");
    const key = input.value.trim();
    const error = $("#login-error");
    error.textContent = "";
    if (!key) { error.textContent = "Paste an admin API key."; input.focus(); return; }
    try {
      await signIn(key);
      input.value = "";
      $("#main").focus();
    } catch (e) {
      error.textContent = e.status === 403
        ? "This key is not an admin key: the dashboard needs a key of role admin."
        : e.status === 401 ? "Unknown or revoked key." : `Sign-in failed: ${e.message}`;
      input.focus();
    }
  });
  $("#sign-out").addEventListener("click", () => signOut("Signed out."));

  // ---- fragments -------------------------------------------------------------------------

  function fragmentUrl(el) {
    const url = new URL(el.dataset.fragment, location.origin);
    if (el.hasAttribute("data-query")) url.search = location.search;
    return url.pathname + url.search;
  }

  async function load(el) {
    const url = fragmentUrl(el);
    const response = await request(url, { accept: "text/html" });
    const html = await response.text();
    el.setAttribute("aria-busy", "false");
    if (state.html.get(el.id) === html) return;
    const focused = document.activeElement && el.contains(document.activeElement)
      ? focusKey(document.activeElement) : null;
    state.html.set(el.id, html);
    el.innerHTML = html;
    tick();
    if (focused) { const again = el.querySelector(focused); if (again) again.focus(); }
    el.dispatchEvent(new CustomEvent("fragment-loaded", { bubbles: true }));
  }

  function focusKey(el) {
    if (el.dataset.action) return `[data-action="${el.dataset.action}"][data-call="${el.dataset.call}"][data-turn="${el.dataset.turn}"]`;
    if (el.dataset.cursor !== undefined) return "[data-cursor]";
    return null;
  }

  async function refresh() {
    if (!state.key || $("#confirm").open) return;
    await Promise.all($$("[data-fragment]").map((el) => load(el).catch((e) => {
      if (e.status === 401) return;
      el.setAttribute("aria-busy", "false");
      if (state.html.has(el.id)) { notify(`Could not refresh: ${e.message}`, true); return; }
      el.innerHTML = "";
      const message = document.createElement("p");
      message.className = "panel error fragment-error";
      message.setAttribute("role", "alert");
      message.textContent = e.status === 404 ? `Not found: ${e.message}` : `Could not load: ${e.message}`;
      el.appendChild(message);
    })));
  }

  function soon(delay = 150) {
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, delay);
  }

  // ---- live updates ----------------------------------------------------------------------

  function setLive(mode) {
    const el = $("#live-state");
    if (!el) return;
    el.dataset.state = mode;
    $(".live-text", el).textContent = { live: "live", reconnecting: "reconnecting…",
                                         connecting: "connecting…" }[mode] || mode;
  }

  async function follow(url, onEvent) {
    let lastId = null;
    const controller = new AbortController();
    state.stream = controller;
    while (!controller.signal.aborted && state.key) {
      try {
        const headers = { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
        if ([401, 403, 404].includes(response.status)) {
          setLive(response.status === 404 ? "not found" : "signed out");
          return;
        }
        if (!response.ok) throw new Error(`${response.status}`);
        setLive("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
            const event = parse(block);
            if (event.id) lastId = event.id;
            if (event.type && event.type !== "ready") onEvent(event);
          }
        }
      } catch (e) {
        if (controller.signal.aborted) return;
      }
      setLive("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function parse(block) {
    const event = { type: null, id: null, data: "" };
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "event") event.type = value;
      else if (field === "id") event.id = value;
      else if (field === "data") event.data += (event.data ? "\n" : "") + value;
    }
    if (!event.type && event.data) event.type = "message";
    return event;
  }

  // ---- time ------------------------------------------------------------------------------

  function duration(seconds) {
    const total = Math.max(0, Math.floor(seconds));
    if (total < 60) return `${total}s`;
    if (total < 3600) return `${Math.floor(total / 60)}m ${String(total % 60).padStart(2, "0")}s`;
    return `${Math.floor(total / 3600)}h ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")}m`;
  }

  function tick() {
    const now = Date.now();
    $$("time[data-since]").forEach((el) => {
      el.textContent = duration((now - Date.parse(el.dataset.since)) / 1000);
    });
    $$("time[data-until]").forEach((el) => {
      const left = (Date.parse(el.dataset.until) - now) / 1000;
      el.textContent = left > 0 ? `${duration(left)} left` : "expiring…";
      el.classList.toggle("low", left < 60);
    });
  }

  // ---- actions ---------------------------------------------------------------------------

  const ACTIONS = {
    approve: { title: "Approve call", verb: "Approve", reason: "optional",
               text: (d) => `Approve ${d.what}? The tool then runs (or its prepared transaction commits).`,
               call: (d, r) => ["POST", `/v1/calls/${d.call}/approve`, r ? { reason: r } : {}] },
    deny: { title: "Deny call", verb: "Deny", reason: "required", danger: true,
            text: (d) => `Deny ${d.what}? It never runs; a held turn transaction is rolled back.`,
            call: (d, r) => ["POST", `/v1/calls/${d.call}/deny`, { reason: r }] },
    cancel: { title: "Cancel call", verb: "Cancel call", reason: "optional", danger: true,
              text: (d) => `Cancel ${d.what} and every call that depends on it? Its held effect is rolled back or compensated.`,
              call: (d, r) => ["POST", `/v1/calls/${d.call}/cancel`, { reason: operator(r) }] },
    commit_turn: { title: "Force-commit turn", verb: "Commit turn",
                   text: (d) => `Commit the turn of ${d.what} now, keeping every live call? Staged calls run and held effects become durable.`,
                   call: (d) => ["POST", `/v1/sessions/${d.session}/turns/${d.turn}/commit`, {}] },
    cancel_turn: { title: "Cancel turn", verb: "Cancel turn", reason: "optional", danger: true,
                   text: (d) => `Cancel the whole turn of ${d.what}? Every call in it is cancelled.`,
                   call: (d, r) => ["POST", `/v1/sessions/${d.session}/turns/${d.turn}/cancel`, { reason: operator(r) }] },
    extend_turn: { title: "Extend turn TTL", verb: "Extend", seconds: true,
                   text: (d) => `Push back the expiry of the turn of ${d.what}? At most one turn TTL from now.`,
                   call: (d, r, s) => ["POST", `/v1/admin/turns/${d.turn}/extend-ttl`, { seconds: s }] },
    extend_call: { title: "Extend TTL", verb: "Extend", seconds: true,
                   text: (d) => `Push back the expiry of ${d.what} (${d.status.replace(/_/g, " ")})?`,
                   call: (d, r, s) => ["POST", `/v1/admin/calls/${d.call}/extend-ttl`, { seconds: s }] },
    retry_compensation: { title: "Retry compensation", verb: "Retry",
                          text: (d) => `Run the compensation of ${d.what} again? The tool worker retries it with the same idempotency key.`,
                          call: (d) => ["POST", `/v1/admin/calls/${d.call}/retry-compensation`, {}] },
  };

  function operator(reason) {
    return reason ? `operator: ${reason}`.slice(0, 500) : "cancelled by an operator";
  }

  let pending = null;

  function openConfirm(button) {
    const data = { ...button.dataset };
    const spec = ACTIONS[data.action];
    if (!spec) return;
    pending = { spec, data, opener: button };
    $("#confirm-title").textContent = spec.title;
    $("#confirm-text").textContent = spec.text(data);
    $("#confirm-reason-field").hidden = !spec.reason;
    $("#confirm-reason").value = "";
    $("#confirm-reason").setAttribute("aria-required", String(spec.reason === "required"));
    $("#confirm-seconds-field").hidden = !spec.seconds;
    $("#confirm-error").textContent = "";
    const yes = $("#confirm-yes");
    yes.textContent = spec.verb;
    yes.classList.toggle("danger", Boolean(spec.danger));
    yes.disabled = false;
    $("#confirm").showModal();
    (spec.reason ? $("#confirm-reason") : spec.seconds ? $("#confirm-seconds") : yes).focus();
  }

  async function confirmPending(event) {
    event.preventDefault();
    if (!pending) return;
    const { spec, data } = pending;
    const reason = $("#confirm-reason").value.trim();
    const seconds = parseInt($("#confirm-seconds").value, 10);
    if (spec.reason === "required" && !reason) {
      $("#confirm-error").textContent = "Give a reason: it goes into the audit trail.";
      $("#confirm-reason").focus();
      return;
    }
    if (spec.seconds && !(seconds >= 1 && seconds <= 86400)) {
      $("#confirm-error").textContent = "Seconds between 1 and 86400.";
      return;
    }
    const [method, path, body] = spec.call(data, reason, seconds);
    $("#confirm-yes").disabled = true;
    try {
      await request(path, { method, body });
      closeConfirm();
      notify(`${spec.verb}: done for ${data.what}.`);
    } catch (e) {
      $("#confirm-yes").disabled = false;
      $("#confirm-error").textContent = `${e.message}${e.code ? ` (${e.code})` : ""}`;
      return;
    }
    soon(0);
  }

  function closeConfirm() {
    const dialog = $("#confirm");
    if (dialog.open) dialog.close();
  }

  $("#confirm-form").addEventListener("submit", confirmPending);
  $("#confirm-no").addEventListener("click", closeConfirm);
  $("#confirm").addEventListener("close", () => {
    const opener = pending && pending.opener;
    pending = null;
    if (opener && document.contains(opener)) opener.focus();
    soon(0);
  });

  function notify(message, isError = false) {
    const toast = $("#toast");
    toast.textContent = message;
    toast.classList.toggle("error", isError);
    toast.classList.add("shown");
    clearTimeout(notify.timer);
    notify.timer = setTimeout(() => toast.classList.remove("shown"), 5000);
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) { openConfirm(button); return; }
    const cursor = event.target.closest("[data-cursor]");
    if (cursor) { setQuery({ cursor: cursor.dataset.cursor }); return; }
    const chip = event.target.closest("[data-set-status]");
    if (chip && page === "queue") {
      event.preventDefault();
      $("#f-status").value = chip.dataset.setStatus;
      setQuery({ status: chip.dataset.setStatus, cursor: "" });
    }
  });

  // ---- filters (queue page) --------------------------------------------------------------

  function setQuery(changes) {
    const params = new URLSearchParams(location.search);
    for (const [name, value] of Object.entries(changes)) {
      if (value) params.set(name, value); else params.delete(name);
    }
    const search = params.toString();
    history.replaceState(null, "", search ? `?${search}` : location.pathname);
    state.html.clear();
    soon(0);
  }

  function setupFilters() {
    const form = $("#filters");
    if (!form) return;
    const params = new URLSearchParams(location.search);
    for (const el of form.elements) {
      if (el.name && params.has(el.name)) el.value = params.get(el.name);
    }
    const apply = () => {
      const changes = {};
      for (const el of form.elements) {
        if (!el.name || el.name === "cursor") continue;
        const defaults = { status: "pending", limit: "25" };
        changes[el.name] = el.value && el.value !== defaults[el.name] ? el.value : "";
      }
      changes.cursor = "";
      setQuery(changes);
    };
    form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
    form.addEventListener("change", (event) => { if (event.target.tagName === "SELECT") apply(); });
    $("#f-reset").addEventListener("click", (event) => {
      event.preventDefault();
      form.reset();
      history.replaceState(null, "", location.pathname);
      state.html.clear();
      soon(0);
    });
  }

  // ---- start -----------------------------------------------------------------------------

  function start() {
    soon(0);
    if (state.started) return;
    state.started = true;
    const session = $("[data-session]");
    const url = session ? `/v1/admin/events?session=${encodeURIComponent(session.dataset.session)}`
                        : "/v1/admin/events";
    follow(url, () => soon(200));
  }

  const every = $("[data-every]");
  if (every) setInterval(() => { if (state.key) soon(0); }, parseInt(every.dataset.every, 10) * 1000);
  setInterval(tick, 1000);

  setupFilters();
  if (state.key) {
    signIn(state.key).catch((e) => signOut(e.status === 401 || e.status === 403
      ? "Sign in again." : `Could not reach the gateway: ${e.message}`));
  } else {
    showSignedIn(false);
    $("#api-key").focus();
  }
})();
