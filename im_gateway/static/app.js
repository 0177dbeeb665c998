// transmit-hub chat page: the UI only. The protocol (client ids, resends after a
// reconnect, acknowledgements, repeats dropped, backoff) is the client module the gateway
// serves at /client.js, the same one applications use (see README, "Clients").
//
// The page takes ?token=JWT from its URL and connects to /ws on the same host. It asks
// the client for the history too (`history: true`, and `historyGroups`: the large groups
// it joined), so a reload shows the inbox and those groups' streams; every
// message the client gives it is shown once, ordered by server time. Own messages are
// shown when sent and marked as the gateway answers them.
import { Client, jwtClaims } from "/client.js";

const T = { PRIVATE: 1, GROUP: 2 };
const MAX_SHOWN = 1000; // messages kept in the page; older ones are dropped from view
const MAX_ERRORS = 20;
const STATUS = {
  connecting: ["connecting", "connecting…"],
  replaying: ["replaying", "connected · loading inbox…"],
  live: ["connected", "connected"],
  reconnecting: ["reconnecting", "reconnecting…"],
  refused: ["error", "refused"],
  closed: ["error", "closed"],
};

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
const claims = token ? jwtClaims(token) : null;
const me = claims && claims.sub !== undefined ? String(claims.sub) : "";
const myName = claims && typeof claims.name === "string" ? claims.name : "";

const state = {
  client: null,
  waiting: [], // own messages not yet written to a socket (shown as pending)
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

// ---- the client ---------------------------------------------------------------------

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  // History on reload: the inbox, and the streams of the large groups this page joined
  // (a group that is not large has its history in the inbox; the client skips it).
  const historyGroups = [...state.groups].filter(([, s]) => s === "joined").map(([id]) => id);
  const client = new Client(`${scheme}://${window.location.host}/ws`, {
    token,
    history: true,
    historyGroups,
  });
  state.client = client;
  client.onstatus = onStatus;
  client.onmessage = onMessage;
  client.onack = (seq) => {
    if (/^[0-9]+$/.test(seq)) document.body.dataset.ackedSeq = seq;
    else document.body.dataset.ackedGroupSeq = seq; // a large group's stream ("g7:12")
  };
  client.onerror = (err) => showError(err.code, err.detail);
  client.ontruncated = (seq) =>
    showError("truncated", `older messages were trimmed from the inbox before ${seq}`);
}

function onStatus(status) {
  const [kind, text] = STATUS[status] || ["reconnecting", status];
  setStatus(kind, text);
  document.body.dataset.replayed = status === "live" ? "true" : "false";
  if (status === "live") document.body.dataset.history = "loaded";
  if (status === "replaying" || status === "live") {
    // Open again: what was typed meanwhile has gone out.
    for (const entry of state.waiting.splice(0)) {
      if (entry.state === "pending") setState(entry, "sent");
    }
  }
  if (status === "refused") {
    showError("auth", "the gateway refused the token: open the page with a new one");
  }
}

function online() {
  const status = state.client ? state.client.status : "";
  return status === "replaying" || status === "live";
}

function onMessage(m) {
  const own = String(m.from) === me;
  addEntry({
    msgId: String(m.id),
    clientId: "",
    type: Number(m.type),
    from: String(m.from),
    to: String(m.to),
    time: String(m.time || Date.now()),
    content: String(m.content ?? ""),
    seq: m.seq ? String(m.seq) : "",
    own,
    state: own ? "acked" : "received",
  });
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

function trimShown() {
  // (The client drops repeats by message id, trimmed ones too.)
  while (el.messages.children.length > MAX_SHOWN) el.messages.firstElementChild.remove();
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

async function sendMessage(type, to, content) {
  const entry = addEntry({
    msgId: "",
    clientId: "",
    type,
    from: me,
    to: String(to),
    time: String(Date.now()),
    content,
    seq: "",
    own: true,
    state: online() ? "sent" : "pending",
  });
  if (entry.state === "pending") state.waiting.push(entry);
  const target = type === T.GROUP ? { group: to } : { to };
  try {
    const sent = await state.client.send({ ...target, content });
    entry.msgId = sent.msgId;
    entry.clientId = sent.clientId;
    entry.li.dataset.msgId = sent.msgId;
    entry.li.dataset.clientId = sent.clientId;
    if (sent.time) setTime(entry, sent.time);
    setState(entry, "acked");
    insertSorted(entry); // now with the server's time
  } catch (err) {
    showError(err.code, err.detail);
    setState(entry, "failed");
    entry.li.dataset.errorCode = err.code || "";
    entry.li.title = `${err.code}: ${err.detail || ""}`;
  }
}

el.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const type = Number(el.kind.value);
  const to = Number(el.to.value);
  const content = el.text.value;
  if (!Number.isInteger(to) || to <= 0 || !content.trim()) return;
  sendMessage(type, to, content);
  el.text.value = "";
  el.text.focus();
});

async function groupAction(kind) {
  const group = Number(el.groupId.value);
  if (!Number.isInteger(group) || group <= 0) {
    el.groupId.reportValidity();
    return;
  }
  const id = String(group);
  state.groups.set(id, kind === "join" ? "joining" : "leaving");
  renderGroups();
  if (kind === "join") {
    el.kind.value = String(T.GROUP);
    el.to.value = id;
  }
  try {
    await (kind === "join" ? state.client.join(group) : state.client.leave(group));
    if (kind === "join") state.groups.set(id, "joined");
    else state.groups.delete(id);
  } catch (err) {
    showError(err.code, err.detail);
    if (kind === "join") state.groups.delete(id);
    else state.groups.set(id, "joined");
    if (err.code === "forbidden") {
      // Say why in words, next to the groups: this gateway does not let this user.
      const policy = el.groupPolicy.dataset.policy;
      el.groupPolicy.textContent =
        `Cannot ${kind} group ${group}: ${err.detail || "forbidden"}. ` +
        (GROUP_POLICIES[policy] || "");
      el.groupPolicy.hidden = false;
      el.groupPolicy.classList.add("refused");
    }
  }
  renderGroups();
}

el.groupForm.addEventListener("submit", (event) => {
  event.preventDefault();
  groupAction("join");
});
el.leaveGroup.addEventListener("click", () => groupAction("leave"));
el.conversations.addEventListener("click", (event) => {
  const li = event.target.closest("li.conv");
  if (li) selectConversation(li.dataset.conv, li.dataset.conv !== "all");
});

// ---- start ------------------------------------------------------------------------

function start() {
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
  if (claims && typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    // The gateway refuses an expired token (HTTP 401); connecting cannot help.
    setStatus("error", "token expired");
    showError("token_expired", "this page's token has expired: open the page with a new one");
    return;
  }
  connect();
}

start();
