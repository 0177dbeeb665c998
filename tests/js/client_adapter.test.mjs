// The JavaScript client's I/O half (Client) with a fake WebSocket at the boundary: which
// URL it connects to and when, how it tells a refused token from a lost gateway, its
// timers for acknowledgements and retries. The protocol state is the core's, tested in
// client_core.test.mjs; the whole runs on real gateways in faults.e2e.mjs.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { Client, TYPE } from "../../im_gateway/static/client.js";
import { until as untilEvery } from "./helpers.mjs";

class FakeSocket {
  static made = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.madeAt = Date.now();
    FakeSocket.made.push(this);
  }

  send(text) {
    assert.equal(this.readyState, 1, "send on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }

  close(code) {
    this.closedWith = code;
    this.readyState = 3;
  }

  // what the server (the test) does
  open() {
    this.readyState = 1;
    this.onopen({});
  }

  frame(obj) {
    this.onmessage({ data: JSON.stringify(obj) });
  }

  drop(code, message = "") {
    if (message) this.onerror({ message });
    this.readyState = 3;
    this.onclose({ code });
  }
}

const realFetch = globalThis.fetch;
const clients = [];

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeSocket.made = [];
  globalThis.fetch = realFetch;
});

function token(claims) {
  return `h.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.s`;
}

function open(urls, options = {}) {
  const client = new Client(urls, {
    token: token({ sub: 1, exp: Date.now() / 1000 + 3600 }),
    WebSocket: FakeSocket,
    backoffInitial: 10,
    backoffMax: 20,
    ...options,
  });
  clients.push(client);
  return client;
}

const until = (condition, what, timeoutMs = 3000) => untilEvery(condition, what, timeoutMs, 2);

const last = () => FakeSocket.made.at(-1);

test("the token goes as the URL's token parameter; sends wait for the socket, in order", async () => {
  const client = open("ws://a/ws");
  assert.equal(last().url, `ws://a/ws?token=${encodeURIComponent(client.token)}&groups=1`);
  const first = client.send({ to: 2, content: "one" });
  const second = client.send({ group: 7, content: "two" });
  last().open();
  const [a, b] = last().sent;
  assert.deepEqual([a.type, a.to, a.content, b.type, b.to, b.content], [1, 2, "one", 2, 7, "two"]);
  last().frame({ type: TYPE.ACCEPTED, id: b.id, msgId: "m2", time: "9" });
  last().frame({ type: TYPE.ACCEPTED, id: a.id, msgId: "m1", time: "8" });
  assert.deepEqual(await first, { clientId: a.id, msgId: "m1", time: "8" });
  assert.deepEqual(await second, { clientId: b.id, msgId: "m2", time: "9" });
  await assert.rejects(client.send({ to: 1, group: 2, content: "x" }), TypeError);
});

test("a refusal rejects with the type 99 code; rate_limited is sent again, same id", async () => {
  const client = open("ws://a/ws", { retryDelay: 10 });
  last().open();
  const refused = client.send({ group: 8, content: "x" });
  const limited = client.send({ to: 2, content: "y" });
  const [r, l] = last().sent;
  last().frame({ type: TYPE.ERROR, id: r.id, code: "not_member", message: "not in 8" });
  await assert.rejects(refused, (err) => err.code === "not_member" && err instanceof Error);
  last().frame({ type: TYPE.ERROR, id: l.id, code: "rate_limited", message: "slow" });
  await until(() => last().sent.length === 3, "the retry");
  assert.equal(last().sent[2].id, l.id);
  last().frame({ type: TYPE.ACCEPTED, id: l.id, msgId: "m", time: "1" });
  assert.equal((await limited).msgId, "m");
});

test("a 401 named by the socket's error (Node's ws) refuses: everything waiting rejects", async () => {
  const client = open(["ws://a/ws", "ws://b/ws"]);
  const waiting = client.send({ to: 2, content: "x" });
  last().drop(1006, "Unexpected server response: 401");
  await assert.rejects(waiting, (err) => err.code === "unauthorized");
  assert.equal(client.status, "refused");
  await assert.rejects(client.send({ to: 2, content: "y" }), (err) => err.code === "unauthorized");
  assert.equal(FakeSocket.made.length, 1, "a refused client does not reconnect");
});

test("a close before open (a browser) is a refusal only when GET /ws answers 401", async () => {
  const asked = [];
  globalThis.fetch = async (url) => {
    asked.push(url);
    return { status: url.startsWith("http://b/") ? 401 : 503 };
  };
  const client = open(["ws://a/ws", "ws://b/ws"]);
  const waiting = client.send({ to: 2, content: "x" });
  last().drop(1006);
  await until(() => FakeSocket.made.length === 2, "a reconnect after the 503");
  assert.equal(last().url.split("?")[0], "ws://b/ws", "the next URL");
  last().drop(1006);
  await assert.rejects(waiting, (err) => err.code === "unauthorized");
  assert.deepEqual(
    asked.map((u) => u.split("?")[0]),
    ["http://a/ws", "http://b/ws"]
  );
  assert.match(asked[0], /\?token=h\./);
});

test("an unreachable gateway (the probe fails too) is retried, never refused", async () => {
  globalThis.fetch = async () => {
    throw new TypeError("fetch failed");
  };
  const client = open(["ws://a/ws"]);
  for (let n = 1; n <= 4; n += 1) {
    await until(() => FakeSocket.made.length === n, `attempt ${n}`);
    last().drop(1006);
  }
  await until(() => FakeSocket.made.length === 5, "attempt 5");
  assert.equal(client.status, "connecting", "never connected yet: still connecting");
});

test("an expired token is refused without connecting", async () => {
  const client = open("ws://a/ws", { token: token({ sub: 1, exp: 1 }) });
  await assert.rejects(client.send({ to: 2, content: "x" }), (err) => err.code === "unauthorized");
  assert.equal(FakeSocket.made.length, 0);
});

test("after a 1012 close it reconnects at once, to the next URL; otherwise after a backoff", async () => {
  const client = open(["ws://a/ws", "ws://b/ws"], { backoffInitial: 60000, backoffMax: 60000 });
  last().open();
  const pending = client.send({ to: 2, content: "x" });
  const frame = last().sent[0];
  const drainedAt = Date.now();
  last().drop(1012);
  await until(() => FakeSocket.made.length === 2, "the reconnect after 1012", 1000);
  assert.ok(last().madeAt - drainedAt < 100, "not at once");
  assert.equal(last().url.split("?")[0], "ws://b/ws");
  last().open();
  assert.deepEqual(last().sent[0], frame, "the unanswered frame again, same client id");
  last().frame({ type: TYPE.ACCEPTED, id: frame.id, msgId: "m", time: "1" });
  await pending;
  last().drop(1006);
  await new Promise((resolve) => setTimeout(resolve, 200)); // a bound: nothing may happen
  assert.equal(FakeSocket.made.length, 2, "a 1006 close waits for its backoff");
});

test("what onmessage got is acknowledged within ~100 ms, and again on close", async () => {
  const client = open("ws://a/ws");
  const shown = [];
  client.onmessage = (m) => shown.push(m.id);
  last().open();
  last().frame({ type: TYPE.REPLAY, seq: "0" });
  assert.equal(client.status, "live");
  const at = Date.now();
  last().frame({ type: 1, id: "m1", from: 2, to: 1, contentType: 0, time: "1", content: "a", seq: "1" });
  last().frame({ type: 1, id: "m1", from: 2, to: 1, contentType: 0, time: "1", content: "a", seq: "1" });
  await until(() => last().sent.some((f) => f.type === TYPE.ACK), "the acknowledgement");
  assert.ok(Date.now() - at < 1000);
  assert.deepEqual(last().sent, [{ type: TYPE.ACK, seq: "1" }]);
  last().frame({ type: 2, id: "m2", from: 3, to: 7, contentType: 0, time: "2", content: "b", seq: "g7:4" });
  const socket = last();
  client.close();
  assert.deepEqual(socket.sent.at(-1), { type: TYPE.ACK, seq: "g7:4" }, "acked on close");
  assert.equal(socket.closedWith, 1000);
  assert.deepEqual(shown, ["m1", "m2"]);
  client.close(); // idempotent
});

test("close() during the connect replay acknowledges what onmessage got of it", async () => {
  // A page closed while its connect replay runs: what it showed must not be shown again
  // by the user's next client.
  const client = open("ws://a/ws");
  const shown = [];
  client.onmessage = (m) => shown.push(m.id);
  const socket = last();
  socket.open();
  socket.frame({ type: 1, id: "m1", from: 2, to: 1, contentType: 0, time: "1", content: "a", seq: "1" });
  socket.frame({ type: 2, id: "m2", from: 3, to: 7, contentType: 0, time: "2", content: "b", seq: "g7:4" });
  assert.equal(client.status, "replaying");
  client.close();
  assert.deepEqual(shown, ["m1", "m2"]);
  assert.deepEqual(socket.sent, [
    { type: TYPE.ACK, seq: "1" },
    { type: TYPE.ACK, seq: "g7:4" },
  ]);
  assert.equal(socket.closedWith, 1000);
});

test("during the connect replay what onmessage got is acknowledged within ackInterval", async () => {
  const client = open("ws://a/ws", { ackInterval: 20 });
  const socket = last();
  socket.open();
  socket.frame({ type: 1, id: "m1", from: 2, to: 1, contentType: 0, time: "1", content: "a", seq: "1" });
  await until(() => socket.sent.some((f) => f.type === TYPE.ACK), "the acknowledgement", 1000);
  assert.deepEqual(socket.sent, [{ type: TYPE.ACK, seq: "1" }]);
  assert.equal(client.status, "replaying", "before the connect replay's end marker");
});

test("requests waiting for an answer are bounded: beyond maxPending, one rejects at once", async () => {
  const client = open("ws://a/ws", { maxPending: 2 });
  client.send({ to: 2, content: "1" }).catch(() => {});
  client.send({ to: 2, content: "2" }).catch(() => {});
  await assert.rejects(client.send({ to: 2, content: "3" }), (err) => err.code === "backlog");
  last().open();
  assert.equal(last().sent.length, 2, "the refused one was never queued");
});

// ---- a gateway that goes silent --------------------------------------------------------

test("a socket that never opens is given up after connectTimeout, for the next URL", async () => {
  globalThis.fetch = () => assert.fail("a handshake that timed out is no refusal to probe");
  const client = open(["ws://a/ws", "ws://b/ws"], { connectTimeout: 50 });
  const waiting = client.send({ to: 2, content: "x" });
  await until(() => FakeSocket.made.length === 2, "a second socket", 2000);
  assert.notEqual(FakeSocket.made[0].closedWith, null, "the first socket is closed");
  assert.equal(last().url.split("?")[0], "ws://b/ws");
  last().open();
  last().frame({ type: TYPE.ACCEPTED, id: last().sent[0].id, msgId: "m", time: "1" });
  assert.equal((await waiting).msgId, "m");
});

test("a 401 probe that gets no answer is given up after connectTimeout: it reconnects", async () => {
  const signals = [];
  globalThis.fetch = (_url, init = {}) =>
    new Promise((_resolve, reject) => {
      signals.push(init.signal);
      if (init.signal) init.signal.addEventListener("abort", () => reject(init.signal.reason));
    });
  const client = open(["ws://a/ws", "ws://b/ws"], { connectTimeout: 50 });
  last().drop(1006); // a close before open: the client asks GET /ws, which hangs
  await until(() => FakeSocket.made.length === 2, "a reconnect despite the hung probe", 2000);
  assert.equal(signals.length, 1);
  assert.equal(client.status, "connecting");
});

test("a socket that goes silent after open is left within 2.5 heartbeats, for the next URL", async () => {
  const client = open(["ws://a/ws", "ws://b/ws"], { heartbeat: 40 });
  last().open();
  last().frame({ type: TYPE.REPLAY, seq: "0" });
  const silent = last();
  const at = Date.now();
  await until(() => FakeSocket.made.length === 2, "the next socket", 2000);
  assert.ok(Date.now() - at >= 100, "not before 2.5 heartbeats");
  assert.equal(silent.closedWith, 4000);
  assert.ok(silent.sent.some((f) => f.type === TYPE.HEARTBEAT), "it asked first");
  assert.equal(last().url.split("?")[0], "ws://b/ws");
  assert.equal(client.status, "reconnecting");
});

test("1012 closes in a row: ten reconnects at once, then the backoff (no reconnect spin)", async () => {
  open(["ws://a/ws", "ws://b/ws"], { backoffInitial: 400, backoffMax: 400 });
  for (let n = 1; n <= 10; n += 1) {
    await until(() => FakeSocket.made.length === n, `socket ${n}`, 1000);
    const dropped = Date.now();
    last().open();
    last().drop(1012);
    await until(() => FakeSocket.made.length === n + 1, `at once after close ${n}`, 1000);
    assert.ok(last().madeAt - dropped < 150, `reconnect ${n} was not at once`);
  }
  const dropped = Date.now();
  last().open();
  last().drop(1012);
  await until(() => FakeSocket.made.length === 12, "the reconnect after its backoff", 2000);
  assert.ok(last().madeAt - dropped >= 190, "the 11th 1012 in a row waits for the backoff");
});

test("a catch-up refused rate_limited with no end marker is asked for again after catchUpDelay", async () => {
  const client = open("ws://a/ws", { catchUpDelay: 30 });
  const shown = [];
  client.onmessage = (m) => shown.push(m.id);
  const m = (n) => ({
    type: 1, id: `m${n}`, from: 2, to: 1, contentType: 0, time: "1", content: "a", seq: String(n),
  });
  last().open();
  last().frame(m(1));
  last().frame({ type: TYPE.REPLAY, seq: "1" });
  last().drop(1006);
  await until(() => FakeSocket.made.length === 2, "the reconnect");
  const socket = last();
  socket.open();
  socket.frame({ type: TYPE.REPLAY, seq: "1" });
  assert.deepEqual(socket.sent, [{ type: TYPE.REPLAY, seq: "1" }]);
  socket.frame({ type: TYPE.ERROR, code: "rate_limited", message: "a replay is running" });
  assert.deepEqual(socket.sent.at(-1), { type: TYPE.HEARTBEAT });
  socket.frame(m(3)); // a live push, held for the catch-up
  socket.frame({ type: TYPE.HEARTBEAT }); // its answer: no marker came
  await until(() => socket.sent.filter((f) => f.type === TYPE.REPLAY).length === 2, "the type 14 again");
  socket.frame(m(2));
  socket.frame(m(3));
  socket.frame({ type: TYPE.REPLAY, seq: "3" });
  assert.equal(client.status, "live");
  assert.deepEqual(shown, ["m1", "m2", "m3"]);
});

test("a connect replay answered internal with no end marker since is left after catchUpDelay", async () => {
  const client = open(["ws://a/ws", "ws://b/ws"], { catchUpDelay: 30 });
  const socket = last();
  socket.open();
  socket.frame({ type: TYPE.ERROR, code: "internal", message: "replay failed; ask again with type 14" });
  await until(() => FakeSocket.made.length === 2, "a new connection");
  assert.equal(socket.closedWith, 4000);
  assert.match(last().url, /^ws:\/\/b\/ws/);
  last().open();
  last().frame({ type: TYPE.REPLAY, seq: "0" });
  assert.equal(client.status, "live");
});
