// The JavaScript client against hostile or stuck gateways that this test runs itself: real
// WebSocket servers (the `ws` package's, from CLIENT_TOOLS) on free ports, scripted frame by
// frame. Run by tests/im_gateway/test_client_js.py (node --test).
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { join } from "node:path";
import { afterEach, test } from "node:test";

import { Client, TYPE } from "../../im_gateway/static/client.js";
import { until } from "./helpers.mjs";

const require = createRequire(join(process.env.CLIENT_TOOLS, "package.json"));
const WebSocket = require("ws");
const { WebSocketServer } = WebSocket;

const servers = [];
const clients = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) {
    for (const socket of s.clients) socket.terminate();
    await new Promise((resolve) => s.close(resolve));
  }
});

/** A server whose connections `onConnection(socket, frames)` scripts; `frames` collects
 * what each connection was sent (parsed). Resolves to its URL and the frames of all. */
async function gateway(onConnection) {
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  servers.push(server);
  await new Promise((resolve) => server.once("listening", resolve));
  const got = [];
  server.on("connection", (socket) => {
    const frames = [];
    socket.on("message", (data) => {
      const frame = JSON.parse(String(data));
      frames.push(frame);
      got.push(frame);
      if (frame.type === TYPE.HEARTBEAT) socket.send('{"type":0}');
    });
    onConnection(socket, frames);
  });
  return { url: `ws://127.0.0.1:${server.address().port}/ws`, got };
}

function token() {
  const claims = { sub: 1, exp: Math.floor(Date.now() / 1000) + 3600 };
  return `h.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.s`;
}

function open(urls, options) {
  const client = new Client(urls, { token: token(), WebSocket, backoffInitial: 10, backoffMax: 50, ...options });
  clients.push(client);
  return client;
}

function msg(pos, id = `m${pos}`) {
  return JSON.stringify({ type: 1, id, from: 2, to: 1, contentType: 0, time: "1", content: id, seq: String(pos) });
}

/** Answers every send (type 10, msgId `m-<client id>`) after the connect replay's marker. */
function answering(socket) {
  socket.send('{"type":14,"seq":"0"}');
  socket.on("message", (data) => {
    const f = JSON.parse(String(data));
    if (f.type === TYPE.PRIVATE) socket.send(JSON.stringify({ type: 10, id: f.id, msgId: `m-${f.id}`, time: "1" }));
  });
}

for (const delivering of [false, true]) {
  const what = delivering ? "heartbeats and deliveries" : "heartbeats";
  test(`a gateway that answers ${what} but no send is left within answerTimeout; sent once elsewhere`, { timeout: 10000 }, async () => {
    const bound = 300;
    const stuck = await gateway((socket) => {
      socket.send('{"type":14,"seq":"0"}');
      if (!delivering) return;
      let pos = 0;
      const timer = setInterval(() => socket.send(msg(++pos, `p${pos}`)), 20);
      socket.on("close", () => clearInterval(timer));
    });
    const good = await gateway(answering);
    const client = open([stuck.url, good.url], { heartbeat: 50, answerTimeout: bound });
    await until(() => client.status === "live", "live on the stuck gateway", 3000);
    const started = Date.now();
    const results = await Promise.all([0, 1, 2].map((i) => client.send({ to: 2, content: `x${i}` })));
    assert.ok(Date.now() - started < bound + 2000, `${Date.now() - started} ms`);
    const first = stuck.got.filter((f) => f.type === TYPE.PRIVATE).map((f) => f.id);
    const again = good.got.filter((f) => f.type === TYPE.PRIVATE).map((f) => f.id);
    assert.equal(first.length, 3);
    assert.deepEqual(again, first, "resent to the next URL once each, with the same ids");
    assert.deepEqual(results.map((r) => r.msgId), first.map((id) => `m-${id}`));
    assert.ok(stuck.got.some((f) => f.type === TYPE.HEARTBEAT), "it answered heartbeats");
    assert.equal(client.answerTimeouts, 1, "given up once, not once per send");
  });
}

test("answers that come slowly, one after another, keep the connection", { timeout: 10000 }, async () => {
  const slow = await gateway((socket) => {
    socket.send('{"type":14,"seq":"0"}');
    let queue = Promise.resolve();
    socket.on("message", (data) => {
      const f = JSON.parse(String(data));
      if (f.type !== TYPE.PRIVATE) return;
      queue = queue.then(async () => {
        await new Promise((resolve) => setTimeout(resolve, 100));
        socket.send(JSON.stringify({ type: 10, id: f.id, msgId: `m-${f.id}`, time: "1" }));
      });
    });
  });
  const client = open([slow.url], { answerTimeout: 300 });
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => client.send({ to: 2, content: `${i}` })));
  assert.equal(results.length, 10);
  assert.equal(client.answerTimeouts, 0);
  assert.equal(slow.got.filter((f) => f.type === TYPE.PRIVATE).length, 10, "nothing resent");
});

/** Resolves as `promise` does, or rejects after `ms` saying what did not happen. */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Refuses every send `code` for `forMs` of each connection (noting when in `refused`),
 * answers it (type 10, msgId `m-<client id>`) after that. */
function refusing(code, refused, forMs = Infinity) {
  return (socket) => {
    socket.send('{"type":14,"seq":"0"}');
    const opened = Date.now();
    socket.on("message", (data) => {
      const f = JSON.parse(String(data));
      if (f.type !== TYPE.PRIVATE) return;
      if (Date.now() - opened < forMs) {
        refused.push(Date.now());
        socket.send(JSON.stringify({ type: 99, id: f.id, code, message: "storage unavailable; send again" }));
      } else {
        socket.send(JSON.stringify({ type: 10, id: f.id, msgId: `m-${f.id}`, time: "1" }));
      }
    });
  };
}

test("a gateway that refuses every send internal is left after internalStreak refusals over internalTimeout; sent once elsewhere", { timeout: 10000 }, async () => {
  const bound = 300;
  const refused = [];
  const stuck = await gateway(refusing("internal", refused));
  const good = await gateway(answering);
  const client = open([stuck.url, good.url], { heartbeat: 50, retryDelay: 20, internalTimeout: bound });
  await until(() => client.status === "live", "live on the stuck gateway", 3000);
  const started = Date.now();
  const sends = Promise.all([0, 1, 2].map((i) => client.send({ to: 2, content: `x${i}` })));
  const results = await within(sends, bound + 3000, "the sends stored on the next URL");
  assert.ok(Date.now() - started < bound + 2000, `${Date.now() - started} ms`);
  const first = [...new Set(stuck.got.filter((f) => f.type === TYPE.PRIVATE).map((f) => f.id))];
  const again = good.got.filter((f) => f.type === TYPE.PRIVATE).map((f) => f.id);
  assert.equal(first.length, 3);
  assert.deepEqual(again, first, "resent to the next URL once each, with the same ids");
  assert.deepEqual(results.map((r) => r.msgId), first.map((id) => `m-${id}`));
  assert.ok(refused.at(-1) - refused[0] >= bound, "left only after the span");
  assert.equal(client.internalTimeouts, 1, "given up once, not once per send");
  assert.equal(client.answerTimeouts, 0);
});

test("with one URL, a gateway refusing internal is reconnected to, and the send stored there with its id", { timeout: 10000 }, async () => {
  const bound = 300;
  const refused = [];
  let connections = 0;
  const only = await gateway((socket) => {
    connections += 1;
    refusing("internal", refused, connections === 1 ? Infinity : 0)(socket);
  });
  const client = open([only.url], { heartbeat: 50, retryDelay: 20, internalTimeout: bound });
  const sent = await within(client.send({ to: 2, content: "x" }), bound + 3000, "the send stored");
  assert.equal(connections, 2);
  assert.equal(sent.msgId, `m-${sent.clientId}`);
  const ids = new Set(only.got.filter((f) => f.type === TYPE.PRIVATE).map((f) => f.id));
  assert.deepEqual([...ids], [sent.clientId]);
  assert.equal(client.internalTimeouts, 1);
});

test("rate_limited refusals alone, many in a row over internalTimeout, do not make the client leave", { timeout: 10000 }, async () => {
  const bound = 300;
  const refused = [];
  let connections = 0;
  const limiting = await gateway((socket) => {
    connections += 1;
    refusing("rate_limited", refused, 3 * bound)(socket);
  });
  const good = await gateway(answering);
  const client = open([limiting.url, good.url], { heartbeat: 50, retryDelay: 20, internalTimeout: bound });
  const sent = await within(client.send({ to: 2, content: "x" }), 5000, "the send stored");
  assert.equal(sent.msgId, `m-${sent.clientId}`);
  assert.equal(connections, 1);
  assert.equal(good.got.length, 0, "the next URL was never tried");
  assert.ok(refused.length >= 3 && refused.at(-1) - refused[0] >= bound, `${refused.length} refusals`);
  assert.equal(client.internalTimeouts ?? 0, 0);
});

test("a gateway streaming a catch-up that never ends: the buffer stays bounded, then the next URL shows each once, in order", { timeout: 20000 }, async () => {
  const bound = 50;
  const total = 120;
  let most = 0;
  // Asked for a catch-up (the page wants history), it streams the inbox and endless live
  // pushes, and never the end marker.
  const endless = await gateway((socket, frames) => {
    socket.send('{"type":14,"seq":"0"}');
    let timer = null;
    socket.on("message", () => {
      if (timer || !frames.some((f) => f.type === TYPE.REPLAY)) return;
      let pos = 0;
      timer = setInterval(() => {
        for (let k = 0; k < 20 && socket.readyState === 1; k += 1) {
          pos += 1;
          socket.send(pos <= total ? msg(pos) : msg(1000 + pos, `push${pos}`));
        }
      }, 1);
    });
    socket.on("close", () => clearInterval(timer));
  });
  // The good one: the connect replay (nothing acknowledged: 1..total) and its marker,
  // and any catch-up asked for, whole, with its marker.
  const good = await gateway((socket) => {
    for (let pos = 1; pos <= total; pos += 1) socket.send(msg(pos));
    socket.send(JSON.stringify({ type: 14, seq: String(total) }));
    socket.on("message", (data) => {
      const f = JSON.parse(String(data));
      if (f.type !== TYPE.REPLAY) return;
      for (let pos = Number(f.seq) + 1; pos <= total; pos += 1) socket.send(msg(pos));
      socket.send(JSON.stringify({ type: 14, seq: String(total) }));
    });
  });
  const client = open([endless.url, good.url], { history: true, catchUpBuffer: bound });
  const shown = [];
  client.onmessage = (m) => shown.push(m);
  const receive = client.core.receive.bind(client.core);
  client.core.receive = (frame) => {
    receive(frame);
    most = Math.max(most, client.core.buffer.length);
  };
  await until(() => shown.length >= total && client.status === "live", `${total} messages shown`, 10000);
  assert.ok(most <= bound, `${most} frames held`);
  assert.ok(endless.got.some((f) => f.type === TYPE.REPLAY), "the endless gateway was asked");
  const ids = shown.map((m) => m.id);
  assert.deepEqual(ids, Array.from({ length: total }, (_, i) => `m${i + 1}`), "each once, in order");
});
