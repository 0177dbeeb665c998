// transmit-hub's JavaScript client: an ES module without dependencies, for browsers and
// Node 20+ (pass `WebSocket` from the `ws` package where there is no global one).
//
//   import { Client } from "/client.js";
//   const client = new Client(["ws://gw-1:8080/ws", "ws://gw-2:8080/ws"], { token });
//   client.onmessage = (m) => console.log(m.from, m.content);   // each message once
//   const { clientId, msgId, time } = await client.send({ to: 42, content: "hi" });
//   await client.send({ group: 7, content: "hi all" });
//   await client.join(7); await client.leave(7);
//   client.close();
//
// Two halves. `ClientCore` is the protocol's state, pure (no sockets, no timers, no
// clocks): it decides what to resend, what to show and what to acknowledge, and is tested
// on its own. `Client` moves frames between the core and a WebSocket, and owns the timers
// (reconnect backoff, retries, acknowledgements, heartbeats).
//
// What the client promises:
// - A frame (send, join, leave) keeps its client id until a type 10 or 99 answers it, and
//   goes out again with the same id after every reconnect; the gateway answers a repeat
//   with the same message id, so a message is stored once however often it was sent.
//   Frames made while disconnected wait and go out in order. `internal` and
//   `rate_limited` refusals are retried; any other type 99 rejects with `err.code`.
// - `onmessage` gets every message for this user once (by message id), each stream (the
//   inbox, each large group `g<group>:<pos>`) in order: messages to the user and the
//   user's own from its other devices, not those this client sent.
// - Type 11 acknowledges, per stream, what `onmessage` was given, and only that: at most
//   every `ackInterval` ms (100) and once more on `close()`, whatever the connection is
//   doing: during its connect replay and catch-ups too (what a client closed then had
//   shown would be shown again by the user's next client). Never past a message not
//   shown: one held for a catch-up's end marker, dropped from a full buffer, or behind
//   this client's own message coming back unanswered. What went out on a connection that
//   was lost is said again on the next (the socket may have died with it unread).
// - A lost connection is retried with jittered exponential backoff, on the next URL of
//   the list; after a 1012 close (the gateway drains), at once (`restartAtOnce`, 10, times
//   in a row at most, until a connection lasts `backoffMax`). A handshake that takes
//   longer than `connectTimeout` (10 s), and an open socket with no frame for 2.5
//   `heartbeat`s (50 s: a stuck gateway, or a dead link that closes nothing), count as
//   lost connections. So does one that owes answers (requests written on it, not
//   answered since) and gives none for `answerTimeout` (30 s): a gateway whose store or
//   pipeline is stuck may still answer heartbeats and deliver; the requests go out
//   again, same ids, on the next connection. The clock runs from the last answer (a
//   retried refusal is one), or from when the connection came to owe something, so a
//   batch answered slowly never trips it; deliveries do not count (they do not show
//   that sends work). Generous: a healthy gateway answers within its store timeout (5 s,
//   once more, then `internal`), behind at most its send queue (1,024 frames); leaving
//   early costs a reconnect, never a repeat. `answerTimeouts` counts those given up.
//   Left too: one whose requests were refused `internal` `internalStreak` (3) times in a
//   row, none stored between, from the first refusal to the last over `internalTimeout`
//   (10 s): a gateway cut off from its Redis answers every send so, and the retries would
//   stay there forever while another gateway would store them. A blip passes (a success
//   ends the streak); an unreachable store is left within about 10 s, a stuck one (each
//   refusal after the gateway's store timeout, tried once more) within about 30 s; with
//   one URL the client reconnects to it. `rate_limited` neither counts nor ends the streak
//   (this user is to slow down; another gateway would say the same) and never makes the
//   client leave. `internalTimeouts` counts those given up.
// - After a reconnect the client asks (type 14) for what came after its own inbox
//   position, since another device of the user may have acknowledged more than it saw
//   (a client that never finished a first replay has no position yet: like a new one, it
//   starts from the user's). So for each large group's stream the connect marker lists
//   (`groups`, each with the user's position there) further on than this client's: from
//   its own position, or from the user's join (`g7:0`) for a stream it has none in (one
//   its user joined from another device meanwhile); on a first connection a listed
//   stream starts, like the inbox, where the user is. A stream the marker did not list
//   (the gateway could not read it then, a Redis Cluster node silent, and follows it
//   once read from the user's position) is taken at its first post on the connection
//   for one listed at the position before that post (where the gateway started: each
//   stream comes without holes), and caught up the same way (a live join may cost a
//   catch-up too: its repeats are dropped by position). Large groups' posts that come
//   before the connect marker wait for it, so that none is shown ahead of its catch-up. The
//   catch-ups run one at a time: the inbox's, then the groups'. One refused
//   `rate_limited` is asked for again after `catchUpDelay` (5 s): from where its end
//   marker says when the replay budget cut it short, from where it was when the gateway
//   refused it outright (another read of the connection ran; no marker comes: a
//   heartbeat, sent then, is answered with none before it); so is one whose read failed
//   (`internal`, no marker). A connect replay answered `internal` (its read failed)
//   that has not ended `catchUpDelay` later (the gateway tries it again only when it
//   failed before it began) is given up with its connection. Its own message coming
//   back in a replay before its answer is held (and the stream behind it) until the
//   answer says whose it is.
// - Bounds: at most `maxPending` (10,000) requests wait for an answer (beyond: rejects at
//   once with code "backlog"); the newest 100,000 message ids are remembered; at most
//   `catchUpBuffer` (10,000) frames are held during a catch-up, until its end marker.
//   Beyond that, frames that will come again are dropped: of the stream caught up (at
//   the marker what lies below the lowest one dropped is shown and the rest asked for
//   again, as after a cut by the replay budget), of a stream caught up later, and a large
//   group's post before the connect marker (its stream is then caught up); a gateway that
//   never sends the marker (ten times the bound dropped) is left. Nothing held is shown
//   before its marker: nothing out of order or twice (ClientCore.hold).
//
// A refused token. The gateway answers a bad token with HTTP 401, which a browser's
// WebSocket does not show (a refused upgrade and an unreachable host both look like a
// close before open). So after a close before open the client asks the gateway once more
// over plain HTTP (`GET /ws?token=...` without an upgrade, which the gateway answers 401
// for a bad token): a 401 means refused; anything else, or no readable answer (a gateway
// on another origin without CORS, a network failure), counts as a lost connection and is
// retried. Node's `ws` says the status in its error ("Unexpected server response: 401"),
// which is used first; a token whose `exp` has passed is refused without trying. A refusal
// rejects everything waiting with `code` "unauthorized" and stops the client.

export const TYPE = Object.freeze({
  HEARTBEAT: 0,
  PRIVATE: 1,
  GROUP: 2,
  ACCEPTED: 10,
  ACK: 11,
  JOIN: 12,
  LEAVE: 13,
  REPLAY: 14,
  ERROR: 99,
});

/** Type 99 codes that the client retries itself (the frame may be sent again). */
export const RETRIED = new Set(["internal", "rate_limited"]);

const INBOX = "";
const SEQ_INBOX = /^[0-9]{1,20}$/;
const SEQ_GROUP = /^g([0-9]{1,20}):([0-9]{1,20})$/;
const UINT64_MAX = 2n ** 64n - 1n;
/** A group seq as the gateway writes it (no leading zeros in the group id). */
const GROUP_SEQ = /^g(0|[1-9][0-9]{0,19}):[0-9]{1,20}$/;
/** At most this many large groups' streams are taken from a connect marker's `groups`. */
export const MAX_LISTED = 10000;

/** A seq's stream and position: `"17"` is the inbox at 17, `"g7:3"` group 7's stream at
 * 3; `null` for anything else. */
export function parseSeq(seq) {
  if (typeof seq !== "string") return null;
  let match = SEQ_INBOX.exec(seq);
  if (match) {
    const pos = BigInt(seq);
    return pos <= UINT64_MAX ? { stream: INBOX, pos } : null;
  }
  match = SEQ_GROUP.exec(seq);
  if (match) {
    const pos = BigInt(match[2]);
    return pos <= UINT64_MAX ? { stream: `g${match[1]}:`, pos } : null;
  }
  return null;
}

/** The seq of position `pos` in `stream` (the inverse of parseSeq). */
export function formatSeq(stream, pos) {
  return stream + String(pos);
}

/** The streams a connect replay's end marker lists (`groups`: `["g7:12", ...]`), each
 * with the position its replay started after, as a Map; what is malformed is skipped
 * (not a list, not a string, not a large group's seq as the gateway writes it), the first
 * of repeats is kept, and at most MAX_LISTED. */
export function listedStreams(groups) {
  const listed = new Map();
  if (!Array.isArray(groups)) return listed;
  for (const seq of groups) {
    if (listed.size >= MAX_LISTED) break;
    const match = typeof seq === "string" ? GROUP_SEQ.exec(seq) : null;
    const where = match && BigInt(match[1]) <= UINT64_MAX ? parseSeq(seq) : null;
    if (where && !listed.has(where.stream)) listed.set(where.stream, where.pos);
  }
  return listed;
}

/** The claims of a JWT, unchecked (the gateway checks them); `null` when unreadable. */
export function jwtClaims(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch (_err) {
    return null;
  }
}

const str = (value) => (value === undefined || value === null ? "" : String(value));

/**
 * The client's protocol state, without I/O. Feed it what happens (`request`, `opened`,
 * `lost`, `receive`, `retry`); take what to write and what to report with `drain()`, and
 * the acknowledgements due with `acks()`.
 *
 * Events (from `drain().events`):
 * - `{kind: "message", message}`: show it (each message once);
 * - `{kind: "accepted", id, msgId, time}` / `{kind: "refused", id, code, message}`: the
 *   answer to a request, once;
 * - `{kind: "retry", id, code}`: refused with a retried code; call `retry(id)` later;
 * - `{kind: "error", code, message}`: a type 99 for no request of ours;
 * - `{kind: "truncated", seq}`: history was lost before this position;
 * - `{kind: "catchup-later"}`: the catch-up was cut short; call `resumeCatchUp()` later;
 * - `{kind: "restart", reason}`: give the connection up (then `lost()`, reconnect);
 * - `{kind: "live"}`: the connection's replays are done.
 */
export class ClientCore {
  /** `me`: this user's id (to recognise its own messages coming back before their
   * answer); `history`: ask for the inbox from the start (on the first connection, and
   * on the next ones until one got an inbox position); `historyGroups`: with
   * `history`, the large groups whose streams that connection also
   * asks for from the start (the gateway starts each where the user joined; a group that
   * is not large, or not the user's, is skipped); `idPrefix`: client ids are
   * `idPrefix + n`; `maxSeen`: message ids remembered; `maxBuffer`: frames held during
   * a catch-up. */
  constructor({
    me = "",
    history = false,
    historyGroups = [],
    idPrefix = "c-",
    maxSeen = 100000,
    maxBuffer = 10000,
  } = {}) {
    this.me = str(me);
    this.history = Boolean(history);
    this.historyGroups = [...historyGroups].map((g) => `g${str(g)}:`);
    this.groupQueue = []; // large groups' streams still to catch up, on this connection
    this.catching = new Set(); // streams caught up on this connection (not shown directly)
    this.settled = new Set(); // large groups' streams whose start this connection knows
    this.asked = null; // the stream whose catch-up runs ("" the inbox), or null
    this.historyDone = false; // a connection went live after asking for historyGroups
    this.historyRun = false; // this connection asks for historyGroups
    this.replayed = false; // a connect replay ended (on this connection or an earlier one)
    this.holdGroups = false; // large groups' posts wait for this connection's connect marker
    this.overflowed = new Set(); // streams of posts dropped (buffer full) before that marker
    this.idPrefix = idPrefix;
    this.maxSeen = maxSeen;
    this.counter = 0;
    this.pending = new Map(); // client id -> {frame, held, owed}; insertion order = send order
    this.owed = 0; // requests written on this connection and not answered since
    this.answered = 0; // answers (type 10, type 99 retried or not) to requests, ever
    this.succeeded = 0; // type 10 answers to requests, ever
    this.internals = 0; // "internal" refusals of requests, ever
    this.maxBuffer = maxBuffer;
    this.dropped = null; // the lowest position of `asked` dropped from a full catch-up buffer
    this.droppedCount = 0; // frames dropped since the last end marker
    this.seen = new Set(); // message ids shown, or known to be this client's (the newest)
    this.streams = new Map(); // stream ("" the inbox, "g7:" a large group) -> its state
    this.connected = false;
    this.phase = "down"; // down | replay | catchup | waiting (to catch up again) | live
    this.opens = 0;
    this.catchUp = false;
    this.buffer = []; // frames held for a catch-up (or the connect marker), until its end
    this.cut = false; // the running catch-up was cut short (rate_limited)
    this.markerDue = false; // rate_limited came: its marker (a budget cut) or a type 0 next
    this.replayFailed = false; // the connect replay was answered internal (its read failed)
    this.out = [];
    this.events = [];
  }

  // ---- what the application does ---------------------------------------------------

  /** A frame that waits for its type 10 (a message, a join, a leave); returns its id. */
  request(frame) {
    this.counter += 1;
    const id = this.idPrefix + this.counter;
    const full = { ...frame, id };
    this.pending.set(id, { frame: full, held: null, owed: this.connected });
    if (this.connected) {
      this.out.push(full);
      this.owed += 1;
    }
    return id;
  }

  /** Send a request again (after a retried refusal), if it still waits. */
  retry(id) {
    const entry = this.pending.get(id);
    if (entry && this.connected) {
      this.out.push(entry.frame);
      this.owe(entry, true);
    }
  }

  /** Whether a request is owed an answer on this connection (kept in `this.owed`). */
  owe(entry, owed) {
    this.owed += Number(owed) - Number(entry.owed);
    entry.owed = owed;
  }

  // ---- what the connection does ------------------------------------------------------

  /** A connection is open: every unanswered request goes out again, in order. */
  opened() {
    this.connected = true;
    this.phase = "replay";
    this.opens += 1;
    // Catch up from this client's own inbox position after the gateway's connect replay
    // (or from the start, when it wants the history and has no position yet: also after
    // a first connection lost before its catch-up showed anything)?
    this.catchUp = this.streams.has(INBOX) || this.history;
    // The groups' history, until one connection got through it.
    this.groupQueue = this.history && !this.historyDone ? [...this.historyGroups] : [];
    this.historyRun = this.groupQueue.length > 0;
    this.catching = new Set(this.catchUp ? [INBOX, ...this.groupQueue] : this.groupQueue);
    this.settled = new Set(this.groupQueue);
    // After a connect replay has ended once, this client may have shown less of a large
    // group's stream than the user acknowledged (another device): its posts wait for the
    // connect marker to say where the user is (onConnectEnd).
    this.holdGroups = this.replayed;
    // The last connection's acknowledgements may have been lost with it: said again.
    for (const state of this.streams.values()) if (state.sent) state.acked = 0n;
    this.overflowed = new Set();
    this.asked = null;
    this.replayFailed = false;
    for (const entry of this.pending.values()) entry.owed = true;
    this.owed = this.pending.size;
    this.out = [...this.pending.values()].map((entry) => entry.frame);
  }

  /** The connection is gone; what was not written yet waits for the next one. */
  lost() {
    this.connected = false;
    this.phase = "down";
    this.dropped = null;
    this.droppedCount = 0;
    for (const entry of this.pending.values()) entry.owed = false;
    this.owed = 0;
    this.out = [];
    this.buffer = [];
    this.cut = false;
    this.markerDue = false;
    this.replayFailed = false;
    this.groupQueue = [];
    this.catching = new Set();
    this.settled = new Set();
    this.overflowed = new Set();
    this.asked = null;
  }

  /** A frame from the gateway (parsed JSON). Anything malformed is ignored. */
  receive(frame) {
    if (!frame || typeof frame !== "object" || !this.connected) return;
    switch (frame.type) {
      case TYPE.PRIVATE:
      case TYPE.GROUP:
        this.onMessage(frame);
        break;
      case TYPE.ACCEPTED:
        this.onAccepted(frame);
        break;
      case TYPE.ERROR:
        this.onRefused(frame);
        break;
      case TYPE.REPLAY:
        this.onReplayEnd(frame);
        break;
      case TYPE.HEARTBEAT:
        this.onHeartbeat();
        break;
      default:
        break;
    }
  }

  /** Type 11 frames due now (one per stream whose shown position passed the last
   * acknowledgement), in every phase of a connection (none without one); marks them
   * acknowledged. A stream's position passes only what was shown or is a repeat of it
   * (this client's own messages included): what a replay brings that a catch-up will
   * bring again is skipped without moving it, what a catch-up brings is held until its
   * end marker (and shown then, below the lowest frame dropped), and behind its own
   * message coming back unanswered a stream is acknowledged only up to `cap`. */
  acks() {
    const frames = [];
    if (!this.connected) return frames;
    for (const [stream, state] of this.streams) {
      const limit = state.queue === null ? state.handled : state.cap;
      if (limit > state.acked) {
        state.acked = limit;
        state.sent = true;
        frames.push({ type: TYPE.ACK, seq: formatSeq(stream, limit) });
      }
    }
    return frames;
  }

  /** What to write and what to report since the last call. */
  drain() {
    const result = { frames: this.out, events: this.events };
    this.out = [];
    this.events = [];
    return result;
  }

  /** The inbox position shown so far (`"0"` before any). */
  get inboxSeq() {
    const state = this.streams.get(INBOX);
    return state ? formatSeq(INBOX, state.handled) : "0";
  }

  // ---- frames ------------------------------------------------------------------------

  onMessage(frame) {
    const id = frame.id;
    if (typeof id !== "string" || id === "") return;
    const where = typeof frame.seq === "string" ? parseSeq(frame.seq) : null;
    const pushed = this.phase === "live" || this.phase === "catchup" || this.phase === "waiting";
    if (pushed && where && where.stream !== INBOX) this.unlisted(where);
    const caught = where !== null && this.catching.has(where.stream);
    if (this.phase === "replay" && caught) {
      // The catch-up replays all of this again, in order, from this client's position
      // (the gateway's replay starts from the user's, which may be further on).
      return;
    }
    const early = this.phase === "replay" && this.holdGroups && where && where.stream !== INBOX;
    if (early || ((this.phase === "catchup" || this.phase === "waiting") && caught)) {
      // Live pushes may come before the catch-up reaches their positions: kept, and
      // sorted by position at its end marker (each is stored before it is pushed, so the
      // catch-up holds them too, and the repeats are dropped by id). A large group's post
      // before the connect marker waits for it (is its stream caught up?). Bounded: hold().
      const state = this.streams.get(where.stream);
      if (state && where.pos <= state.handled) return; // a repeat
      this.hold(frame, where);
      return;
    }
    if (where && where.pos <= this.stream(where.stream).handled) {
      // Each stream comes in order without holes (a catch-up included), so a position
      // already passed is a repeat, seen or set aside for the catch-up.
      return;
    }
    if (this.seen.has(id)) {
      if (where) this.handle(where);
      return;
    }
    this.remember(id);
    const message = {
      id,
      from: frame.from,
      to: frame.to,
      type: frame.type,
      contentType: frame.contentType,
      time: frame.time,
      content: frame.content,
      seq: frame.seq,
    };
    if (where) this.handle(where);
    this.present(message, where);
  }

  /** Show a message, in its stream's order: behind a held one, or held itself when it
   * may be this client's own message coming back (in a replay) before its answer. */
  present(message, where) {
    const state = where ? this.stream(where.stream) : null;
    if (state && state.queue !== null) {
      state.queue.push({ message, where });
      return;
    }
    const mine = this.me !== "" && str(message.from) === this.me ? this.unanswered(message) : null;
    if (mine) {
      // Held until the answer says whose it is; the stream waits behind it, and is
      // acknowledged no further than what was shown before it.
      mine.held = { message, where };
      if (state) {
        state.queue = [];
        state.cap = state.shown;
      }
      return;
    }
    if (state) state.shown = where.pos;
    this.events.push({ kind: "message", message });
  }

  onAccepted(frame) {
    const id = frame.id;
    const entry = typeof id === "string" ? this.pending.get(id) : undefined;
    if (!entry) return; // an answer to a repeat: the first one settled it
    const msgId = frame.msgId;
    // Without a message id it cannot say whose a held copy is: malformed, and ignored
    // (the request is sent again on the next connection).
    if (typeof msgId !== "string") return;
    this.owe(entry, false);
    this.answered += 1;
    this.succeeded += 1;
    this.pending.delete(id);
    if (msgId) {
      this.remember(msgId);
      this.unqueue(msgId);
    }
    this.release(entry, msgId);
    this.events.push({ kind: "accepted", id, msgId, time: str(frame.time) });
  }

  onRefused(frame) {
    const id = frame.id;
    // A refusal without a code is malformed: taken as "internal" (sent again, same id).
    const code = typeof frame.code === "string" && frame.code ? frame.code : "internal";
    const message = str(frame.message);
    const entry = typeof id === "string" ? this.pending.get(id) : undefined;
    if (!entry) {
      // For no request of ours: "internal" here is an acknowledgement the gateway could
      // not store ("send it again"), and "rate_limited" may be one it refused ("too many
      // frames": an acknowledgement has no id to say so), so every acknowledged stream's
      // position goes out again (not those taken from a marker: up to MAX_LISTED frames,
      // for nothing). Saying a position again costs nothing: it never moves back.
      if (code === "internal" || code === "rate_limited") {
        for (const state of this.streams.values()) if (state.sent) state.acked = 0n;
      }
      // Or a replay's read failed. Acknowledgements go out during the replays too, so the
      // gateway's words tell them apart ("ack not stored; send it again"): taken for a
      // replay's failure, an ack's would give a long connect replay up, or ask a catch-up
      // again that still runs (its marker then ignored).
      const readFailed = code === "internal" && !message.startsWith("ack not stored");
      // "internal" during a catch-up: its read failed: no marker comes; it is asked for
      // again after a pause, from where it was.
      // "internal" during the connect replay: its read failed. The gateway tries it again
      // (a second later) only when it failed before it began; else no marker comes, and
      // the pushes of the streams to catch up would be dropped until one did: without a
      // marker after a pause, the connection is given up (resumeCatchUp).
      if (readFailed && this.phase === "replay") {
        this.replayFailed = true;
        this.events.push({ kind: "catchup-later" });
      }
      if (readFailed && this.phase === "catchup") {
        this.cut = false;
        this.markerDue = false;
        this.phase = "waiting";
        this.events.push({ kind: "catchup-later" });
      }
      // "rate_limited" during a catch-up: the gateway's replay budget cuts it short (its
      // end marker comes right behind), or it refused the type 14 outright while another
      // read of the connection ran (no marker comes). A heartbeat tells them apart: its
      // answer comes after that marker, if there is one (onHeartbeat).
      if (code === "rate_limited" && this.phase === "catchup") {
        this.cut = true;
        this.markerDue = true;
        this.out.push({ type: TYPE.HEARTBEAT });
      }
      // "not_member" to a group catch-up: not a large group of the user's; the next one.
      if (code === "not_member" && this.phase === "catchup" && this.asked) {
        const stream = this.asked;
        this.catching.delete(stream);
        this.showHeld(stream);
        if (!this.nextGroup()) this.goLive();
      }
      this.events.push({ kind: "error", code, message });
      return;
    }
    this.owe(entry, false); // answered: a retried one is owed again once resent
    this.answered += 1;
    if (code === "internal") this.internals += 1;
    if (RETRIED.has(code)) {
      this.events.push({ kind: "retry", id, code });
      return;
    }
    this.pending.delete(id);
    this.release(entry, "");
    this.events.push({ kind: "refused", id, code, message });
  }

  /** A heartbeat's answer. After a catch-up's rate_limited with no end marker since, the
   * type 14 was refused outright (a budget cut's marker comes right behind its refusal):
   * asked for again after a pause, from where it was (nothing of it came). */
  onHeartbeat() {
    if (!this.markerDue) return;
    this.markerDue = false;
    if (this.phase !== "catchup" || !this.cut) return;
    this.cut = false;
    this.phase = "waiting";
    this.events.push({ kind: "catchup-later" });
  }

  onReplayEnd(frame) {
    if (frame.truncated === true) this.events.push({ kind: "truncated", seq: str(frame.seq) });
    const upto = parseSeq(str(frame.seq));
    if (this.phase === "replay") {
      // The connect replay's marker (its seq: everything in the inbox up to it went to
      // this connection, unless the inbox is caught up).
      this.onConnectEnd(upto && upto.stream === INBOX ? upto : null, frame.groups);
      return;
    }
    // Otherwise the marker of the catch-up running (one at a time); any other is ignored.
    if (this.phase !== "catchup" || !upto || upto.stream !== this.asked) return;
    this.markerDue = false;
    this.droppedCount = 0;
    if (this.dropped === null && !this.cut) {
      this.caughtUp(upto);
      return;
    }
    // Cut short by the replay budget at `upto`, or frames dropped from a full buffer:
    // show what came up to there (only below the lowest frame dropped: the stream's
    // position, and so its acknowledgement, stops there), and ask again from there: at
    // once after drops, later (`resumeCatchUp`) after a cut. Only this stream's frames:
    // another's position counts in its own stream, whose catch-up comes after (shown
    // now, it would pass that one's history).
    const stream = this.asked;
    const cut = this.cut;
    this.cut = false;
    let limit = upto.pos;
    if (this.dropped !== null) {
      if (this.dropped - 1n < limit) limit = this.dropped - 1n;
      this.dropped = null;
      // What lies above comes again, and so do the held frames of the streams still to
      // catch up: let go, so that the next round has room.
      this.buffer = this.buffer.filter((f) => {
        const where = parseSeq(f.seq);
        return where.stream === stream ? where.pos <= limit : !this.catching.has(where.stream);
      });
    }
    this.showHeld(stream, limit);
    this.handle({ stream, pos: limit });
    if (cut) {
      this.phase = "waiting";
      this.events.push({ kind: "catchup-later" });
      return;
    }
    this.ask(stream);
  }

  /** The connect replay's end marker: `reached`, its inbox position; `groups`, the large
   * groups' streams it lists, each with the position its replay started after (the
   * user's acknowledged one, which another device may have moved past what this client
   * showed). Each listed stream this client has shown less of is caught up from its own
   * position; one it has no position in, from the user's join ("g7:0": the gateway
   * starts there) when this client had a connect replay before, else (a new client) its
   * position is taken from the marker, as the inbox's is, unacknowledged. The inbox's
   * catch-up comes first, then the groups', one at a time. */
  onConnectEnd(reached, groups) {
    const first = !this.replayed;
    this.replayed = true;
    this.droppedCount = 0;
    for (const [stream, start] of listedStreams(groups)) {
      this.settled.add(stream);
      if (this.catching.has(stream)) continue; // the groups' history: from its start
      const state = this.streams.get(stream);
      if (state ? start > state.handled : !first) {
        this.queueCatchUp(stream);
      } else if (!state) {
        const taken = this.stream(stream);
        taken.handled = start;
        taken.shown = start;
        taken.acked = start;
      }
    }
    // Streams whose held posts overflowed the buffer: read again from this client's own.
    for (const stream of this.overflowed) this.queueCatchUp(stream);
    this.overflowed = new Set();
    // The large groups' posts held for the marker: those of a stream it did not list are
    // its first pushes (unlisted); then shown now when their stream needs no catch-up,
    // else let go (its catch-up brings them again: stored before pushed).
    const held = this.buffer;
    this.buffer = [];
    const firsts = held.map((f) => parseSeq(f.seq));
    firsts.sort((a, b) => (a.pos < b.pos ? -1 : a.pos > b.pos ? 1 : 0));
    for (const where of firsts) this.unlisted(where); // each stream's lowest first
    this.flush(held.filter((f) => !this.catching.has(parseSeq(f.seq).stream)));
    this.phase = "catchup";
    if (this.catchUp) {
      this.ask(INBOX);
      return;
    }
    if (reached) this.handle(reached);
    if (!this.nextGroup()) this.goLive();
  }

  /** Catch up a large group's stream on this connection, after those queued already. */
  queueCatchUp(stream) {
    this.settled.add(stream);
    if (this.catching.has(stream)) return;
    this.catching.add(stream);
    this.groupQueue.push(stream);
  }

  /** `where`: the first post on this connection of a large group's stream that its
   * connect marker did not list (the gateway could not read it then: a cluster node
   * silent; it follows the stream once read, from the user's position, or from a live
   * join; each stream comes in order without holes, so that post is right after where
   * the gateway started). Taken as a marker listing the stream at that start: when it
   * is beyond this client's position (another device acknowledged posts it did not
   * show), the stream is caught up from that position, as a listed one (from the
   * user's join, "g7:0", when it has none after an earlier connect replay: joined from
   * another device meanwhile; a new client, on its first, starts where the gateway
   * does). Once per stream and connection; a live join may cost a catch-up, its
   * repeats dropped by position. */
  unlisted(where) {
    const stream = where.stream;
    if (this.settled.has(stream)) return;
    this.settled.add(stream);
    const state = this.streams.get(stream);
    // (holdGroups: a connect replay ended on an earlier connection.)
    if (state ? where.pos - 1n <= state.handled : !this.holdGroups) return;
    this.queueCatchUp(stream);
    if (this.phase !== "live") return; // asked for after the catch-ups before it
    this.phase = "catchup";
    this.nextGroup();
  }

  /** The catch-up of `this.asked` is complete up to `upto`: what was held of its stream
   * is shown (in order: live pushes ahead of the marker came in order too), then the
   * next stream's catch-up, or live. */
  caughtUp(upto) {
    const stream = this.asked;
    this.catching.delete(stream);
    this.showHeld(stream);
    this.handle(upto);
    if (!this.nextGroup()) this.goLive();
  }

  /** The replays are done: whatever is still held is shown, in each stream's order. */
  goLive() {
    const held = this.buffer;
    this.buffer = [];
    this.phase = "live";
    if (this.catchUp) this.historyDone = true;
    this.catching = new Set();
    this.groupQueue = [];
    this.asked = null;
    this.flush(held);
    this.events.push({ kind: "live" });
  }

  /** Ask for the next queued large group's stream from this client's position in it (0
   * when none: the gateway starts where the user joined); false when none is left. */
  nextGroup() {
    this.asked = null;
    this.dropped = null;
    const stream = this.groupQueue.shift();
    if (stream === undefined) return false;
    this.ask(stream);
    return true;
  }

  /** Ask (type 14) for `stream` after this client's position in it. */
  ask(stream) {
    this.asked = stream;
    this.out.push({ type: TYPE.REPLAY, seq: formatSeq(stream, this.position(stream)) });
  }

  /** Ask again for a catch-up cut short or refused (after a pause); give the connection
   * up when its connect replay failed and has not ended since. */
  resumeCatchUp() {
    if (this.phase === "replay" && this.replayFailed) {
      this.lost();
      this.events.push({ kind: "restart", reason: "connect replay failed" });
      return;
    }
    if (this.phase !== "waiting" || this.asked === null) return;
    this.ask(this.asked);
    this.phase = "catchup";
  }

  /** Hold a frame until its catch-up's end marker (or, for a large group's post before
   * the connect marker, until that), within `maxBuffer`. When full, the frame is dropped
   * when it will come again: a frame of the stream being caught up (the lowest position
   * dropped is remembered: at the end marker what lies below it is shown, the rest asked
   * for again), of a stream whose catch-up comes later on this connection, or a large
   * group's post before the connect marker (its stream is then caught up from this
   * client's position). A gateway that drops ten times the bound without an end marker
   * (that never ends its replay) is given up (event "restart", and the groups' history
   * with it, so that a long one cannot restart every connection; what the user has not
   * acknowledged still comes in the connect replay). Nothing held is shown before its
   * marker, so nothing is shown out of order or twice. */
  hold(frame, where) {
    if (this.buffer.length < this.maxBuffer) {
      this.buffer.push(frame);
      return;
    }
    if (this.phase === "replay") {
      // A large group's post before the connect marker (a connect replay may bring any
      // number): its stream is caught up once the marker came.
      if (this.overflowed.has(where.stream) || this.overflowed.size < MAX_LISTED) {
        this.overflowed.add(where.stream);
        return;
      }
    } else if (++this.droppedCount <= 10 * this.maxBuffer) {
      if (where.stream === this.asked) {
        if (this.dropped === null || where.pos < this.dropped) this.dropped = where.pos;
        return;
      }
      if (this.catching.has(where.stream)) return;
    }
    if (this.historyRun) this.historyDone = true;
    this.lost();
    this.events.push({ kind: "restart", reason: "catch-up buffer full" });
  }

  /** Show the held frames of `stream` (those up to `limit`, or all), as if they came now;
   * keep the others. */
  showHeld(stream, limit = null) {
    const show = [];
    const keep = [];
    for (const f of this.buffer) {
      const where = parseSeq(f.seq);
      if (where.stream === stream && (limit === null || where.pos <= limit)) show.push(f);
      else keep.push(f);
    }
    this.buffer = keep;
    this.flush(show);
  }

  /** Set-aside frames, in position order, as if they came now. */
  flush(frames) {
    const sorted = frames.map((f) => [parseSeq(f.seq).pos, f]);
    sorted.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const phase = this.phase;
    this.phase = "flush";
    for (const [, f] of sorted) this.onMessage(f);
    this.phase = phase;
  }

  // ---- helpers -----------------------------------------------------------------------

  /** The first unanswered message request that this message could be the copy of. */
  unanswered(message) {
    for (const entry of this.pending.values()) {
      const f = entry.frame;
      if (
        entry.held === null &&
        (f.type === TYPE.PRIVATE || f.type === TYPE.GROUP) &&
        f.type === message.type &&
        str(f.to) === str(message.to) &&
        f.content === message.content
      ) {
        return entry;
      }
    }
    return null;
  }

  /** The answer says `msgId` is this client's own message: if its copy waits behind a
   * held one (it came back before its answer, while another was held), it is not shown
   * when the queue is let go (`present` would take it for another device's by then). */
  unqueue(msgId) {
    for (const state of this.streams.values()) {
      if (state.queue) state.queue = state.queue.filter((item) => item.message.id !== msgId);
    }
  }

  /** A request is answered: a message it held is shown unless it was this request's,
   * then what waited behind it. */
  release(entry, msgId) {
    const held = entry.held;
    if (held === null) return;
    entry.held = null;
    const state = held.where ? this.stream(held.where.stream) : null;
    if (state) state.shown = held.where.pos;
    if (held.message.id !== msgId) this.events.push({ kind: "message", message: held.message });
    if (state) {
      const queue = state.queue;
      state.queue = null;
      state.cap = 0n;
      for (const item of queue) this.present(item.message, item.where);
    }
  }

  /** This client's position in `stream` (0 before any). */
  position(stream) {
    const state = this.streams.get(stream);
    return state ? state.handled : 0n;
  }

  handle(where) {
    const state = this.stream(where.stream);
    if (where.pos > state.handled) state.handled = where.pos;
  }

  stream(name) {
    let state = this.streams.get(name);
    if (!state) {
      // handled: the position passed; shown: the last shown (or found to be own);
      // queue: messages behind a held one (null: none held); cap: the limit of acks then;
      // sent: a type 11 went out (said again on a new connection; not a position taken
      // from a marker, which is the user's already).
      state = { handled: 0n, shown: 0n, acked: 0n, queue: null, cap: 0n, sent: false };
      this.streams.set(name, state);
    }
    return state;
  }

  remember(id) {
    if (this.seen.has(id)) return;
    this.seen.add(id);
    if (this.seen.size > this.maxSeen) {
      // A Set iterates in insertion order: the first is the oldest.
      this.seen.delete(this.seen.values().next().value);
    }
  }
}

/** Since when a connection owes answers without giving any, fed the time (ms) after
 * every input with the core's `owed` and `answered`: the moment it came to owe
 * something (from owing nothing), or its last answer while it still owes more; `null`
 * while it owes nothing. Pure, like the core. */
export class AnswerWatch {
  constructor() {
    this.since = null;
    this.seen = 0;
  }

  update(owed, answered, now) {
    const progressed = answered !== this.seen;
    this.seen = answered;
    if (owed <= 0) this.since = null;
    else if (this.since === null || progressed) this.since = now;
  }

  /** When the connection is overdue (`null`: it owes nothing). */
  due(bound) {
    return this.since === null ? null : this.since + bound;
  }
}

/** A connection's streak of "internal" refusals with no success between, fed after every
 * input with the core's `succeeded` and `internals` and the time (ms); `restart()` on a
 * new connection. `givenUp(streak, span)`: at least `streak` refusals in a row, from the
 * first to the last `span` ms or more (then the streak starts again).
 * Pure, like the core. */
export class RefusalWatch {
  constructor() {
    this.seen = [0, 0];
    this.streak = 0;
    this.first = 0;
    this.last = 0;
  }

  update(succeeded, internals, now) {
    if (succeeded !== this.seen[0]) this.streak = 0;
    if (internals !== this.seen[1]) {
      if (this.streak === 0) this.first = now;
      this.streak += internals - this.seen[1];
      this.last = now;
    }
    this.seen = [succeeded, internals];
  }

  restart() {
    this.streak = 0;
  }

  givenUp(streak, span) {
    if (this.streak < Math.max(streak, 1) || this.last - this.first < span) return false;
    this.streak = 0;
    return true;
  }
}

/** An `Error` with the type 99 `code` (or "unauthorized", "closed"). */
export class ClientError extends Error {
  constructor(code, message) {
    super(message ? `${code}: ${message}` : code);
    this.name = "ClientError";
    this.code = code;
    this.detail = message || "";
  }
}

const DEFAULTS = {
  backoffInitial: 250, // ms; doubles per failed attempt, jittered, up to backoffMax
  backoffMax: 10000,
  restartAtOnce: 10, // 1012 closes in a row followed by a reconnect at once; then the backoff
  retryDelay: 200, // ms before a retried refusal goes out again (doubles, up to 5 s)
  ackInterval: 100,
  heartbeat: 20000, // ms between type 0 frames; no frame for 2.5x this: the socket is dead
  connectTimeout: 10000, // ms for the handshake (and for the 401 probe): then the next URL
  catchUpDelay: 5000, // ms before asking again for a catch-up refused, failed or cut short
  catchUpBuffer: 10000, // frames held during a catch-up; beyond it, see ClientCore.hold
  answerTimeout: 30000, // ms a connection may owe answers without giving any: then the next URL
  internalStreak: 3, // "internal" refusals in a row (none stored between) that, over
  internalTimeout: 10000, // ms or more from the first to the last, leave for the next URL
  maxPending: 10000, // requests waiting for their answer; beyond it, a request rejects ("backlog")
};

/** Unique enough for a client id prefix, in browsers and Node. */
function randomPrefix() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("") + "-";
}

/**
 * A connection to transmit-hub gateways that does the client's half of the protocol.
 *
 * `urls`: one `ws://.../ws` URL or a list (tried in turn when one is gone); options:
 * `token` (the JWT), `WebSocket` (the constructor; default the global one), `history`
 * (on the first connection, also replay the inbox from its start: a page that shows
 * history; asked again on the next while none of it came), `historyGroups` (with `history`: the large groups whose streams are also
 * replayed from where the user joined), and the timings of DEFAULTS. Callbacks: `onmessage(m)`, `onstatus(state)`
 * ("connecting", "replaying", "live", "reconnecting", "refused", "closed"),
 * `onerror(err)` (a type 99 for no request), `ontruncated(seq)`, `onack(seq)` (a type 11
 * went out).
 */
export class Client {
  constructor(urls, options = {}) {
    this.urls = (Array.isArray(urls) ? urls : [urls]).map(String);
    if (this.urls.length === 0) throw new TypeError("Client needs at least one URL");
    this.token = str(options.token);
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass {WebSocket} (in Node, from the 'ws' package)");
    }
    this.options = { ...DEFAULTS, ...options };
    this.claims = jwtClaims(this.token);
    const me = this.claims && this.claims.sub !== undefined ? str(this.claims.sub) : "";
    this.core = new ClientCore({
      me,
      history: options.history,
      historyGroups: options.historyGroups || [],
      idPrefix: randomPrefix(),
      maxBuffer: this.options.catchUpBuffer,
    });
    this.answers = new AnswerWatch();
    this.answerTimeouts = 0; // connections given up for owing answers too long
    this.refusals = new RefusalWatch();
    this.internalTimeouts = 0; // connections given up for refusing "internal" too long
    this.onmessage = null;
    this.onack = null;
    this.onstatus = null;
    this.onerror = null;
    this.ontruncated = null;
    this.status = "connecting";
    this.waiting = new Map(); // client id -> {resolve, reject, retries}
    this.ws = null;
    this.urlIndex = 0;
    this.attempt = 0;
    this.atOnce = 0; // reconnects at once after 1012 closes, in a row
    this.openedAt = 0;
    this.opened = false;
    this.closed = false;
    this.refusal = null;
    this.timers = {
      reconnect: null,
      opening: null,
      ack: null,
      heartbeat: null,
      answer: null,
      answerDue: null,
      retries: new Set(),
    };
    this.lastFrameAt = 0;
    this.connect();
  }

  /** Send `{to, content}` or `{group, content}` (optional `contentType`); resolves to
   * `{clientId, msgId, time}` once stored for every recipient. */
  send({ to, group, content, contentType = 0 }) {
    if ((to === undefined) === (group === undefined)) {
      return Promise.reject(new TypeError("send needs exactly one of 'to' and 'group'"));
    }
    const type = group === undefined ? TYPE.PRIVATE : TYPE.GROUP;
    const target = group === undefined ? to : group;
    return this.request({ type, to: target, contentType, content: str(content) });
  }

  /** Join a group (type 12); resolves once the gateway says so. */
  join(group) {
    return this.request({ type: TYPE.JOIN, to: group });
  }

  /** Leave a group (type 13). */
  leave(group) {
    return this.request({ type: TYPE.LEAVE, to: group });
  }

  /** Acknowledge what was shown, close the socket and stop; idempotent. What still
   * waits rejects with code "closed". */
  close() {
    if (this.closed) return;
    this.flushAcks();
    this.stop(new ClientError("closed", "the client was closed"), "closed");
  }

  // ---- internals ---------------------------------------------------------------------

  request(frame) {
    if (this.closed) {
      return Promise.reject(this.refusal || new ClientError("closed", "the client was closed"));
    }
    if (this.waiting.size >= this.options.maxPending) {
      const limit = this.options.maxPending;
      return Promise.reject(new ClientError("backlog", `${limit} requests already wait`));
    }
    return new Promise((resolve, reject) => {
      const id = this.core.request(frame);
      this.waiting.set(id, { resolve, reject, retries: 0 });
      this.pump();
    });
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    if (this.onstatus) this.onstatus(status);
  }

  url() {
    const base = this.urls[this.urlIndex % this.urls.length];
    const sep = base.includes("?") ? "&" : "?";
    // groups=1: the connect marker lists the large groups followed (see ClientCore).
    return `${base}${sep}token=${encodeURIComponent(this.token)}&groups=1`;
  }

  expired() {
    const exp = this.claims ? this.claims.exp : undefined;
    return typeof exp === "number" && exp * 1000 < Date.now();
  }

  connect() {
    this.timers.reconnect = null;
    if (this.closed) return;
    if (this.expired()) {
      this.refuse("the token has expired");
      return;
    }
    this.setStatus(this.opened ? "reconnecting" : "connecting");
    const url = this.url();
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this.failed(null, String(err && err.message ? err.message : err), url, false, 1006);
      return;
    }
    this.ws = ws;
    let open = false;
    let errorText = "";
    // A gateway (or a dead link) that takes the connection and never answers the
    // handshake: neither a browser nor Node's ws gives up on its own.
    this.timers.opening = setTimeout(() => {
      this.timers.opening = null;
      if (ws !== this.ws) return;
      this.ws = null;
      try {
        ws.close(4000, "handshake timeout");
      } catch (_err) {
        /* already closing */
      }
      this.failed(ws, "", url, false, 1006, true);
    }, this.options.connectTimeout);
    ws.onopen = () => {
      if (ws !== this.ws) return;
      clearTimeout(this.timers.opening);
      this.timers.opening = null;
      open = true;
      this.opened = true;
      this.openedAt = Date.now();
      this.lastFrameAt = Date.now();
      this.core.opened();
      this.refusals.restart();
      this.setStatus("replaying");
      this.startHeartbeat();
      this.pump();
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
      } catch (_err) {
        return;
      }
      this.core.receive(frame);
      this.pump();
    };
    ws.onerror = (event) => {
      errorText = str(event && (event.message || (event.error && event.error.message)));
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      clearTimeout(this.timers.opening);
      this.timers.opening = null;
      this.failed(ws, errorText, url, open, event ? event.code : 1006);
    };
  }

  /** The socket is gone (or never opened): decide between refused and reconnect (a
   * handshake that timed out is no refusal: not asked). */
  async failed(ws, errorText, url, wasOpen, code, timedOut = false) {
    if (ws) this.ws = null;
    this.core.lost();
    this.refusals.restart();
    this.stopHeartbeat();
    this.watchAnswers();
    if (this.closed) return;
    if (!wasOpen && !timedOut) {
      if (/\b401\b/.test(errorText) || (await this.probeRefused(url))) {
        this.refuse("the gateway refused the token (HTTP 401)");
        return;
      }
      if (this.closed) return;
    }
    this.setStatus("reconnecting");
    this.urlIndex += 1; // this one is gone (or draining): try the next
    if (wasOpen && Date.now() - this.openedAt >= this.options.backoffMax) this.atOnce = 0;
    let delay;
    if (code === 1012 && this.atOnce < this.options.restartAtOnce) {
      // The gateway drains: another one takes us at once (not forever: one that keeps
      // saying so is not hammered).
      this.atOnce += 1;
      delay = 0;
    } else {
      const base = Math.min(
        this.options.backoffMax,
        this.options.backoffInitial * 2 ** Math.min(this.attempt, 16)
      );
      delay = Math.round(base / 2 + Math.random() * (base / 2));
    }
    this.attempt += 1;
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  /** After a close before open: does the gateway answer 401 over plain HTTP (within
   * `connectTimeout`)? */
  async probeRefused(url) {
    if (typeof fetch !== "function") return false;
    try {
      const http = url.replace(/^ws(s?):/i, "http$1:");
      const signal = AbortSignal.timeout(this.options.connectTimeout);
      const response = await fetch(http, { cache: "no-store", redirect: "manual", signal });
      return response.status === 401;
    } catch (_err) {
      return false; // unreachable, or another origin that does not let us read it
    }
  }

  refuse(reason) {
    this.refusal = new ClientError("unauthorized", reason);
    this.stop(this.refusal, "refused");
  }

  stop(error, status) {
    this.closed = true;
    clearTimeout(this.timers.reconnect);
    clearTimeout(this.timers.opening);
    clearTimeout(this.timers.ack);
    for (const timer of this.timers.retries) clearTimeout(timer);
    this.timers.retries.clear();
    this.stopHeartbeat();
    clearTimeout(this.timers.answer);
    const ws = this.ws;
    this.ws = null;
    this.core.lost();
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch (_err) {
        /* already closing */
      }
    }
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(error);
    this.setStatus(status);
  }

  /** Write what the core wants written and report what it has to say. */
  pump() {
    const { frames, events } = this.core.drain();
    for (const frame of frames) this.write(frame);
    for (const event of events) this.dispatch(event);
    this.watchAnswers();
    this.watchRefusals();
    // In every phase: what the connect replay or a catch-up showed is acknowledged too.
    if (this.core.connected && !this.timers.ack) {
      this.timers.ack = setTimeout(() => {
        this.timers.ack = null;
        this.flushAcks();
      }, this.options.ackInterval);
    }
  }

  write(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  flushAcks() {
    if (!this.ws || this.ws.readyState !== 1) return;
    for (const frame of this.core.acks()) {
      this.write(frame);
      if (this.onack) this.onack(frame.seq);
    }
  }

  dispatch(event) {
    switch (event.kind) {
      case "message":
        if (this.onmessage) this.onmessage(event.message);
        break;
      case "accepted": {
        const w = this.waiting.get(event.id);
        this.waiting.delete(event.id);
        this.attempt = 0;
        if (w) w.resolve({ clientId: event.id, msgId: event.msgId, time: event.time });
        break;
      }
      case "refused": {
        const w = this.waiting.get(event.id);
        this.waiting.delete(event.id);
        if (w) w.reject(new ClientError(event.code, event.message));
        break;
      }
      case "retry": {
        const w = this.waiting.get(event.id);
        const retries = w ? w.retries++ : 0;
        const delay = Math.min(5000, this.options.retryDelay * 2 ** Math.min(retries, 5));
        const timer = setTimeout(() => {
          this.timers.retries.delete(timer);
          this.core.retry(event.id);
          this.pump();
        }, Math.round(delay / 2 + Math.random() * (delay / 2)));
        this.timers.retries.add(timer);
        break;
      }
      case "error":
        if (this.onerror) this.onerror(new ClientError(event.code, event.message));
        break;
      case "truncated":
        if (this.ontruncated) this.ontruncated(event.seq);
        break;
      case "catchup-later": {
        const timer = setTimeout(() => {
          this.timers.retries.delete(timer);
          this.core.resumeCatchUp();
          this.pump();
        }, this.options.catchUpDelay);
        this.timers.retries.add(timer);
        break;
      }
      case "live":
        this.attempt = 0;
        this.setStatus("live");
        break;
      case "restart":
        if (this.ws) this.drop(this.ws, event.reason);
        break;
      default:
        break;
    }
  }

  startHeartbeat() {
    this.stopHeartbeat();
    const every = this.options.heartbeat;
    this.timers.heartbeat = setInterval(() => {
      const ws = this.ws;
      if (!ws) return;
      if (Date.now() - this.lastFrameAt > every * 2.5) {
        // No frame at all for that long (not even the heartbeat's answer): dead.
        this.drop(ws, "heartbeat timeout");
        return;
      }
      this.write({ type: TYPE.HEARTBEAT });
    }, every);
  }

  /** Give an open socket up (close 4000) and reconnect, to the next URL. */
  drop(ws, reason) {
    this.ws = null;
    try {
      ws.close(4000, reason);
    } catch (_err) {
      /* already closing */
    }
    this.failed(ws, "", "", true, 4000);
  }

  /** Keep one timer at the answer deadline (see `answerTimeout`): when it fires and the
   * connection still owes answers given none since, it is given up. */
  watchAnswers() {
    const bound = this.options.answerTimeout;
    this.answers.update(this.core.owed, this.core.answered, Date.now());
    const due = this.answers.due(bound);
    if (due === this.timers.answerDue) return;
    clearTimeout(this.timers.answer);
    this.timers.answer = null;
    this.timers.answerDue = due;
    if (due === null) return;
    this.timers.answer = setTimeout(() => {
      this.timers.answer = null;
      this.timers.answerDue = null;
      const late = this.answers.due(bound);
      if (!this.ws || this.closed || late === null) return;
      if (late > Date.now()) {
        this.watchAnswers(); // an answer moved it meanwhile
        return;
      }
      this.answerTimeouts += 1;
      this.drop(this.ws, "answer timeout");
    }, Math.max(0, due - Date.now()));
  }

  /** Give the connection up once its requests were refused "internal" `internalStreak`
   * times in a row over `internalTimeout` (see `internalTimeout` in the header). */
  watchRefusals() {
    this.refusals.update(this.core.succeeded, this.core.internals, Date.now());
    const { internalStreak, internalTimeout } = this.options;
    if (!this.ws || !this.refusals.givenUp(internalStreak, internalTimeout)) return;
    this.internalTimeouts += 1;
    this.drop(this.ws, "internal refusals");
  }

  stopHeartbeat() {
    clearInterval(this.timers.heartbeat);
    this.timers.heartbeat = null;
  }
}
