// transmit-hub chat page: plain JavaScript, no build step.
//
// Protocol (see README, "WebSocket frames"): JSON text frames keyed by numeric `type`.
// The page takes ?token=JWT from its URL and connects to /ws on the same host. The gateway
// replays the inbox after the user's acknowledged position and ends with a type 14 marker;
// the page then asks for what came after its *own* last position ({"type":14,"seq":...}):
// "0" on a new page load, so a reload shows the history, and its last shown position on a
// reconnect, since another device of the same user may have acknowledged more than this
// page saw. Every message is shown once (deduplicated by message id), ordered by server
// time. What is shown is acknowledged with type 11 (the highest inbox position, which is
// cumulative). A lost connection is retried with exponential backoff; frames not yet
// accepted (no type 10) are resent with the same client id, which the gateway answers with
// the same message id, so nothing is sent twice.
"use strict";

(() => {
  const T = {
    HEARTBEAT: 0,
    PRIVATE: 1,
    GROUP: 2,
    ACCEPTED: 10,
    ACK: 11,
    JOIN: 12,
    LEAVE: 13,
    REPLAY: 14,
    ERROR: 99,
  };
  const HEARTBEAT_MS = 20000;
  const DEAD_AFTER_MS = 50000; // no frame at all for this long: the socket is dead
  const BACKOFF_INITIAL_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const ACK_DELAY_MS = 150;
  const HISTORY_WAIT_MS = 5000;
  const FAILURES_BEFORE_HINT = 4; // failed attempts in a row before the page says so
  const MAX_SHOWN = 1000; // messages kept in the page; older ones are dropped from view
  const MAX_ERRORS = 20;

  const $ = (id) => document.getElementById(id);
  const el = {
    me: $("me"),
    gateway: $("gateway"),
    status: $("status"),
    statusText: $("status-text"),
    conversations: $("conversations"),
    groupForm: $("group-form"),
    groupId: $("group-id"),
    leaveGroup: $("leave-group"),
    groups: $("groups"),
    groupPolicy: $("group-policy"),
    errors: $("errors"),
    timeline: $("timeline"),
    empty: $("empty"),
    messages: $("messages"),
    composer: $("composer"),
    kind: $("kind"),
    to: $("to"),
    text: $("text"),
  };

  // ---- pure helpers -------------------------------------------------------------------

  /** Order inbox positions (decimal strings, consecutive per user): <0, 0 or >0.
   * "" and "0" sort first. BigInt: positions are uint64. */
  function compareSeq(a, b) {
    const pa = parseSeq(a);
    const pb = parseSeq(b);
    return pa < pb ? -1 : pa > pb ? 1 : 0;
  }

  function parseSeq(seq) {
    const text = String(seq || "0");
    return /^[0-9]{1,20}$/.test(text) ? BigInt(text) : 0n;
  }

  /** The JSON payload of a JWT, without checking it (the gateway does that). */
  function jwtPayload(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (_err) {
      return null;
    }
  }

  /** A client id unique per page load (crypto.randomUUID needs a secure context). */
  function newClientId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return "c-" + window.crypto.randomUUID();
    }
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function formatTime(ms) {
    const d = new Date(Number(ms));
    if (Number.isNaN(d.getTime())) return "";
    const now = new Date();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (d.toDateString() === now.toDateString()) return time;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
  }

  function conversationKey(type, from, to, me) {
    if (type === T.GROUP) return "g:" + to;
    return "u:" + (String(from) === me ? to : from);
  }

  // ---- state --------------------------------------------------------------------------

  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || "";
  const claims = token ? jwtPayload(token) : null;
  const me = claims && claims.sub !== undefined ? String(claims.sub) : "";
  const myName = claims && typeof claims.name === "string" ? claims.name : "";

  const state = {
    ws: null,
    connected: false,
    everConnected: false,
    attempt: 0,
    reconnectTimer: null,
    heartbeatTimer: null,
    lastFrameAt: 0,
    resumeFrom: "0", // this connection catches up from here (its own last position)
    catchUpRequested: false, // the type 14 request of this connection is out
    historyLoaded: false, // the whole inbox arrived once (per page load)
    catchUpTimer: null,
    lastSeq: "0", // highest inbox position shown
    ackedSeq: "0", // highest position acknowledged with type 11
    ackTimer: null,
    byMsgId: new Map(), // message id -> entry
    byClientId: new Map(), // own client id -> entry (messages, joins, leaves)
    outbox: [], // own frames not yet accepted (type 10), resent after reconnect
    conversations: new Map(), // key -> {key, label, type, to}
    filter: "all",
    groups: new Map(), // group id -> "joining" | "joined" | "leaving"
  };

  // ---- status and identity ------------------------------------------------------------

  function setStatus(kind, text) {
    el.status.dataset.state = kind;
    el.statusText.textContent = text;
  }

  function showIdentity() {
    el.me.textContent = myName ? `${myName} (user ${me})` : `user ${me}`;
    el.me.dataset.userId = me;
    document.title = `${myName || "user " + me} · transmit-hub chat`;
  }

  async function loadGatewayInfo() {
    try {
      const response = await fetch("/info", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const info = await response.json();
      el.gateway.textContent = info.gatewayId;
      el.gateway.dataset.gatewayId = info.gatewayId;
      showGroupPolicy(info.groupJoin);
    } catch (err) {
      el.gateway.textContent = "unknown gateway";
    }
  }

  // What the gateway's --group-join lets this page do, in a sentence under the groups.
  const GROUP_POLICIES = {
    open: "This gateway lets anyone join any group (--group-join open: a demo setting).",
    token: "You may join the groups your token lists; leaving is always allowed.",
    server: "Groups are managed by the application on this gateway: joining here is refused.",
  };

  function showGroupPolicy(policy) {
    const text = GROUP_POLICIES[policy];
    if (!text) return;
    el.groupPolicy.textContent = text;
    el.groupPolicy.dataset.policy = policy;
    el.groupPolicy.hidden = false;
  }

  function showError(code, message, clientId) {
    const li = document.createElement("li");
    li.className = "error";
    li.dataset.testid = "error";
    li.dataset.code = code || "error";
    if (clientId) li.dataset.clientId = clientId;
    const strong = document.createElement("strong");
    strong.textContent = code || "error";
    const span = document.createElement("span");
    span.textContent = message ? " " + message : "";
    const when = document.createElement("time");
    when.textContent = formatTime(Date.now());
    li.append(strong, span, when);
    el.errors.prepend(li);
    while (el.errors.children.length > MAX_ERRORS) el.errors.lastElementChild.remove();
  }

  // ---- connection ---------------------------------------------------------------------

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${window.location.host}/ws?token=${encodeURIComponent(token)}`;
    setStatus(state.everConnected ? "reconnecting" : "connecting",
      state.everConnected ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      showError("connect", String(err));
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.addEventListener("open", () => onOpen(ws));
    ws.addEventListener("message", (event) => onFrame(ws, event.data));
    ws.addEventListener("close", (event) => onClose(ws, event));
    ws.addEventListener("error", () => {
      /* a close event follows */
    });
  }

  function onOpen(ws) {
    if (ws !== state.ws) return;
    state.connected = true;
    state.everConnected = true;
    state.lastFrameAt = Date.now();
    // The gateway replays after the position the *user* acknowledged, possibly from
    // another device, so this page asks for what came after its own last position.
    state.resumeFrom = state.historyLoaded ? state.lastSeq : "0";
    state.catchUpRequested = false;
    setStatus("replaying", "connected · loading inbox…");
    // Frames that were never accepted go out again, with the same client ids.
    for (const frame of state.outbox) {
      const entry = state.byClientId.get(frame.id);
      if (sendRaw(frame) && entry && entry.kind === "message" && entry.state === "pending") {
        setState(entry, "sent");
      }
    }
    startHeartbeat();
  }

  function onClose(ws, event) {
    if (ws !== state.ws) return;
    state.ws = null;
    state.connected = false;
    state.catchUpRequested = false;
    clearTimeout(state.catchUpTimer);
    stopHeartbeat();
    document.body.dataset.replayed = "false";
    if (event.code === 1008 || event.code === 4401) {
      showError("auth", "the gateway refused the token: " + (event.reason || event.code));
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    if (claims && typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
      // The gateway refuses an expired token (HTTP 401); retrying cannot help.
      setStatus("error", "token expired");
      showError("token_expired", "this page's token has expired: open the page with a new one");
      return;
    }
    if (state.attempt === FAILURES_BEFORE_HINT) {
      showError(
        "unreachable",
        "cannot connect: the gateway is down or refuses the token; still retrying"
      );
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** state.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    state.attempt += 1;
    setStatus("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function startHeartbeat() {
    stopHeartbeat();
    state.heartbeatTimer = setInterval(() => {
      const ws = state.ws;
      if (!ws) return;
      if (Date.now() - state.lastFrameAt > DEAD_AFTER_MS) {
        ws.close(4000, "heartbeat timeout");
        onClose(ws, { code: 4000, reason: "heartbeat timeout" });
        return;
      }
      sendRaw({ type: T.HEARTBEAT });
    }, HEARTBEAT_MS);
  }

  function stopHeartbeat() {
    clearInterval(state.heartbeatTimer);
    state.heartbeatTimer = null;
  }

  function sendRaw(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame that expects a type 10 answer; kept until then and resent on reconnect. */
  function sendTracked(frame) {
    state.outbox.push(frame);
    return sendRaw(frame);
  }

  // ---- incoming frames ----------------------------------------------------------------

  function onFrame(ws, data) {
    if (ws !== state.ws) return;
    state.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (_err) {
      showError("bad_frame", "the gateway sent something that is not JSON");
      return;
    }
    switch (frame.type) {
      case T.PRIVATE:
      case T.GROUP:
        onMessage(frame);
        break;
      case T.ACCEPTED:
        onAccepted(frame);
        break;
      case T.REPLAY:
        onReplayEnd(frame);
        break;
      case T.ERROR:
        onError(frame);
        break;
      case T.HEARTBEAT:
        break;
      default:
        break;
    }
  }

  function onReplayEnd(_frame) {
    document.body.dataset.replayed = "true";
    if (!state.catchUpRequested) {
      // First end marker on this connection: the gateway's own replay is done. Ask for
      // everything after this page's last position: the whole inbox on a new page load
      // (so a reload shows the history), what this page missed on a reconnect.
      state.catchUpRequested = true;
      sendRaw({ type: T.REPLAY, seq: state.resumeFrom });
      setStatus(
        "replaying",
        state.historyLoaded ? "connected · catching up…" : "connected · loading history…"
      );
      // A gateway that does not answer this request must not leave the page waiting.
      state.catchUpTimer = setTimeout(() => caughtUp(), HISTORY_WAIT_MS);
      return;
    }
    caughtUp();
  }

  function caughtUp() {
    clearTimeout(state.catchUpTimer);
    state.catchUpTimer = null;
    if (!state.connected) return;
    state.attempt = 0; // a connection that got this far resets the backoff
    state.historyLoaded = true;
    document.body.dataset.history = "loaded";
    setStatus("connected", "connected");
    scheduleAck();
  }

  function onAccepted(frame) {
    const entry = state.byClientId.get(frame.id);
    state.outbox = state.outbox.filter((f) => f.id !== frame.id);
    if (!entry) return;
    state.byClientId.delete(frame.id);
    if (entry.kind === "join" || entry.kind === "leave") {
      if (entry.kind === "join") state.groups.set(entry.group, "joined");
      else state.groups.delete(entry.group);
      renderGroups();
      return;
    }
    // An own message: accepted means stored for every recipient.
    const other = frame.msgId ? state.byMsgId.get(frame.msgId) : undefined;
    if (other && other !== entry) {
      // The message came back (another device of ours, or a replay) before this answer.
      removeEntry(entry);
      if (other.kind === "message") setState(other, "acked");
      return;
    }
    if (frame.msgId) {
      entry.msgId = frame.msgId;
      entry.li.dataset.msgId = frame.msgId;
      state.byMsgId.set(frame.msgId, entry);
    }
    if (frame.time) setTime(entry, frame.time);
    setState(entry, "acked");
    insertSorted(entry); // now with the server's time
  }

  function onError(frame) {
    showError(frame.code, frame.message, frame.id);
    if (!frame.id) return;
    state.outbox = state.outbox.filter((f) => f.id !== frame.id);
    const entry = state.byClientId.get(frame.id);
    if (!entry) return;
    state.byClientId.delete(frame.id);
    if (entry.kind === "join" || entry.kind === "leave") {
      if (entry.kind === "join") state.groups.delete(entry.group);
      else state.groups.set(entry.group, "joined");
      renderGroups();
      if (frame.code === "forbidden") {
        // Say why in words, next to the groups: this gateway does not let this user.
        const policy = el.groupPolicy.dataset.policy;
        el.groupPolicy.textContent =
          `Cannot ${entry.kind} group ${entry.group}: ${frame.message || "forbidden"}. ` +
          (GROUP_POLICIES[policy] || "");
        el.groupPolicy.hidden = false;
        el.groupPolicy.classList.add("refused");
      }
      return;
    }
    setState(entry, "failed");
    entry.li.dataset.errorCode = frame.code || "";
    entry.li.title = `${frame.code}: ${frame.message || ""}`;
  }

  function onMessage(frame) {
    const id = String(frame.id);
    const seq = frame.seq ? String(frame.seq) : "";
    let entry = state.byMsgId.get(id);
    if (!entry && String(frame.from) === me) {
      // Our own message, pushed back before its type 10 answer arrived: adopt it.
      entry = findPendingOwn(frame);
      if (entry) {
        entry.msgId = id;
        entry.li.dataset.msgId = id;
        state.byMsgId.set(id, entry);
      }
    }
    if (entry) {
      if (seq && !entry.seq) {
        entry.seq = seq;
        entry.li.dataset.seq = seq;
      }
      if (entry.own && entry.li.dataset.state !== "acked") setState(entry, "acked");
    } else {
      entry = addEntry({
        msgId: id,
        clientId: "",
        type: Number(frame.type),
        from: String(frame.from),
        to: String(frame.to),
        time: String(frame.time || Date.now()),
        content: String(frame.content ?? ""),
        seq,
        own: String(frame.from) === me,
        state: String(frame.from) === me ? "acked" : "received",
      });
    }
    if (seq) noteSeq(seq, true);
  }

  function findPendingOwn(frame) {
    for (const entry of state.byClientId.values()) {
      if (
        entry.kind === "message" &&
        !entry.msgId &&
        entry.type === Number(frame.type) &&
        entry.to === String(frame.to) &&
        entry.content === String(frame.content ?? "")
      ) {
        return entry;
      }
    }
    return undefined;
  }

  // ---- acknowledgements ---------------------------------------------------------------

  function noteSeq(seq, shown) {
    if (compareSeq(seq, state.lastSeq) > 0) state.lastSeq = seq;
    if (shown) scheduleAck();
  }

  function scheduleAck() {
    if (state.ackTimer) return;
    state.ackTimer = setTimeout(() => {
      state.ackTimer = null;
      if (compareSeq(state.lastSeq, state.ackedSeq) <= 0) return;
      if (sendRaw({ type: T.ACK, seq: state.lastSeq })) {
        state.ackedSeq = state.lastSeq;
        document.body.dataset.ackedSeq = state.ackedSeq;
      }
    }, ACK_DELAY_MS);
  }

  // ---- rendering messages -------------------------------------------------------------

  function addEntry(fields) {
    const entry = { kind: "message", ...fields, li: document.createElement("li") };
    const li = entry.li;
    li.className = "msg " + (entry.own ? "own" : "theirs");
    li.dataset.testid = "message";
    li.dataset.msgId = entry.msgId || "";
    li.dataset.clientId = entry.clientId || "";
    li.dataset.type = String(entry.type);
    li.dataset.from = entry.from;
    li.dataset.to = entry.to;
    li.dataset.seq = entry.seq || "";
    li.dataset.own = entry.own ? "true" : "false";
    li.dataset.conv = conversationKey(entry.type, entry.from, entry.to, me);

    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "who";
    who.dataset.testid = "sender";
    who.textContent = describe(entry);
    const when = document.createElement("time");
    when.className = "time";
    when.dataset.testid = "time";
    meta.append(who, when);

    const body = document.createElement("div");
    body.className = "content";
    body.dataset.testid = "content";
    body.textContent = entry.content;

    const footer = document.createElement("div");
    footer.className = "delivery";
    footer.dataset.testid = "delivery";

    li.append(meta, body, footer);
    entry.timeEl = when;
    entry.stateEl = footer;
    setTime(entry, entry.time);
    setState(entry, entry.state);
    li.addEventListener("click", () => selectConversation(li.dataset.conv, true));

    insertSorted(entry);
    if (entry.msgId) state.byMsgId.set(entry.msgId, entry);
    noteConversation(entry);
    applyFilter(li);
    el.empty.hidden = true;
    trimShown();
    return entry;
  }

  function describe(entry) {
    const sender = entry.own ? "you" : `user ${entry.from}`;
    if (entry.type === T.GROUP) return `${sender} → group ${entry.to}`;
    if (entry.own) return `you → user ${entry.to}`;
    return sender;
  }

  function setTime(entry, ms) {
    entry.time = String(ms);
    entry.li.dataset.time = entry.time;
    entry.timeEl.textContent = formatTime(ms);
    entry.timeEl.dateTime = new Date(Number(ms)).toISOString();
  }

  function setState(entry, value) {
    entry.state = value;
    entry.li.dataset.state = value;
    const labels = {
      pending: "◷ waiting for connection",
      sent: "✓ sent",
      acked: "✓✓ delivered to inboxes",
      failed: "✕ refused",
      received: "",
    };
    entry.stateEl.textContent = entry.own ? labels[value] || value : "";
  }

  /** Keep the timeline ordered by server time (then inbox position). */
  function insertSorted(entry) {
    const key = Number(entry.time);
    const scrolledToEnd =
      el.timeline.scrollHeight - el.timeline.scrollTop - el.timeline.clientHeight < 80;
    let before = null;
    const unsent = (node) => node.dataset.state === "pending" || node.dataset.state === "sent";
    if (!unsent(entry.li)) {
      // Own messages not yet accepted stay last: their time is still the browser's clock.
      for (let node = el.messages.lastElementChild; node; node = node.previousElementSibling) {
        if (node === entry.li) continue;
        if (!unsent(node)) {
          const t = Number(node.dataset.time);
          if (t < key || (t === key && compareSeq(node.dataset.seq, entry.seq || "") <= 0)) break;
        }
        before = node;
      }
    }
    el.messages.insertBefore(entry.li, before);
    if (scrolledToEnd || entry.own) {
      el.timeline.scrollTop = el.timeline.scrollHeight;
    }
  }

  function removeEntry(entry) {
    entry.li.remove();
    if (entry.msgId && state.byMsgId.get(entry.msgId) === entry) state.byMsgId.delete(entry.msgId);
  }

  function trimShown() {
    while (el.messages.children.length > MAX_SHOWN) {
      const first = el.messages.firstElementChild;
      const id = first.dataset.msgId;
      first.remove();
      // Keep the id known, so a late duplicate of a trimmed message is not shown again.
      if (id) state.byMsgId.set(id, { kind: "trimmed", li: first, own: false });
    }
  }

  // ---- conversations and groups -------------------------------------------------------

  function noteConversation(entry) {
    const key = conversationKey(entry.type, entry.from, entry.to, me);
    if (state.conversations.has(key)) return;
    const isGroup = entry.type === T.GROUP;
    const target = isGroup ? entry.to : entry.own ? entry.to : entry.from;
    const conv = { key, type: entry.type, to: target, label: isGroup ? `group ${target}` : `user ${target}` };
    state.conversations.set(key, conv);
    const li = document.createElement("li");
    li.className = "conv";
    li.dataset.conv = key;
    li.dataset.testid = "conversation";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = conv.label;
    li.append(button);
    el.conversations.append(li);
  }

  function selectConversation(key, setComposer) {
    state.filter = key;
    for (const li of el.conversations.children) {
      li.classList.toggle("active", li.dataset.conv === key);
    }
    for (const li of el.messages.children) applyFilter(li);
    const conv = state.conversations.get(key);
    if (conv && setComposer) {
      el.kind.value = String(conv.type);
      el.to.value = conv.to;
      el.text.focus();
    }
    el.timeline.scrollTop = el.timeline.scrollHeight;
  }

  function applyFilter(li) {
    li.hidden = state.filter !== "all" && li.dataset.conv !== state.filter;
  }

  // Groups joined from this browser, remembered across reloads (membership itself lives
  // on the server; this is only what the list shows).
  const groupsKey = "transmit-hub:groups:" + me;

  function loadGroups() {
    try {
      const ids = JSON.parse(window.localStorage.getItem(groupsKey) || "[]");
      for (const id of ids) state.groups.set(String(id), "joined");
    } catch (_err) {
      /* storage unavailable or corrupt: start empty */
    }
    renderGroups();
  }

  function saveGroups() {
    try {
      const joined = [...state.groups].filter(([, s]) => s === "joined").map(([id]) => id);
      window.localStorage.setItem(groupsKey, JSON.stringify(joined));
    } catch (_err) {
      /* storage unavailable: the list is just not remembered */
    }
  }

  function renderGroups() {
    saveGroups();
    el.groups.replaceChildren();
    const ids = [...state.groups.keys()].sort((a, b) => Number(a) - Number(b));
    for (const id of ids) {
      const li = document.createElement("li");
      li.className = "group";
      li.dataset.testid = "group";
      li.dataset.group = id;
      li.dataset.state = state.groups.get(id);
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `group ${id}`;
      button.title = "write to this group";
      button.addEventListener("click", () => {
        el.kind.value = String(T.GROUP);
        el.to.value = id;
        el.text.focus();
      });
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = li.dataset.state === "joined" ? "member" : li.dataset.state + "…";
      li.append(button, badge);
      el.groups.append(li);
    }
  }

  // ---- user actions -------------------------------------------------------------------

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const type = Number(el.kind.value);
    const to = Number(el.to.value);
    const content = el.text.value;
    if (!Number.isInteger(to) || to <= 0 || !content.trim()) return;
    const clientId = newClientId();
    const frame = { type, id: clientId, to, contentType: 0, content };
    const entry = addEntry({
      msgId: "",
      clientId,
      type,
      from: me,
      to: String(to),
      time: String(Date.now()),
      content,
      seq: "",
      own: true,
      state: "pending",
    });
    state.byClientId.set(clientId, entry);
    if (sendTracked(frame)) setState(entry, "sent");
    el.text.value = "";
    el.text.focus();
  });

  function groupAction(type) {
    const group = Number(el.groupId.value);
    if (!Number.isInteger(group) || group <= 0) {
      el.groupId.reportValidity();
      return;
    }
    const clientId = newClientId();
    const kind = type === T.JOIN ? "join" : "leave";
    state.byClientId.set(clientId, { kind, group: String(group) });
    state.groups.set(String(group), type === T.JOIN ? "joining" : "leaving");
    renderGroups();
    sendTracked({ type, id: clientId, to: group });
    if (type === T.JOIN) {
      el.kind.value = String(T.GROUP);
      el.to.value = String(group);
    }
  }

  el.groupForm.addEventListener("submit", (event) => {
    event.preventDefault();
    groupAction(T.JOIN);
  });
  el.leaveGroup.addEventListener("click", () => groupAction(T.LEAVE));
  el.conversations.addEventListener("click", (event) => {
    const li = event.target.closest("li.conv");
    if (li) selectConversation(li.dataset.conv, li.dataset.conv !== "all");
  });

  // ---- start --------------------------------------------------------------------------

  if (!token || !me) {
    setStatus("error", "no token");
    el.me.textContent = "nobody";
    showError(
      "no_token",
      token ? "the token in the URL cannot be read" : "open this page with ?token=<JWT> in the URL"
    );
    el.composer.querySelector("button").disabled = true;
    loadGatewayInfo();
    return;
  }
  showIdentity();
  loadGroups();
  loadGatewayInfo();
  connect();
  window.addEventListener("online", () => {
    if (!state.ws) connect();
  });
})();
