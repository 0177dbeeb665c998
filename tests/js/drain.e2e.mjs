// A real drain, driven by tests/end_to_end/test_client_drain.py: alice and bob on
// [gw-1, gw-2] (the module as gw-2 serves it, imported from those bytes), alice sending to
// bob with many in flight; this test asks pytest to SIGTERM gw-1 ("drain gw-1" over the
// control connection). Each client's sockets are recorded (open, and close with its code):
// after gw-1's 1012 close, the next socket to open is on gw-2, within the bound given.
// Every send resolves with a message id; bob is shown each message once, in order.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { join } from "node:path";
import { test } from "node:test";

const config = JSON.parse(process.env.CLIENT_E2E);
const require = createRequire(join(process.env.CLIENT_TOOLS, "package.json"));
const WebSocket = require("ws");
const [GW1, GW2] = config.urls;

async function loadServedModule() {
  const response = await fetch(`${config.http}/client.js`);
  assert.equal(response.status, 200);
  const served = Buffer.from(await response.arrayBuffer());
  assert.ok(served.equals(readFileSync(config.moduleFile)), "served bytes differ from the file");
  return import(`data:text/javascript;base64,${served.toString("base64")}`);
}

function ask(line) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(config.controlPort, "127.0.0.1");
    let answer = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      answer += chunk;
      if (answer.includes("\n")) {
        socket.destroy();
        resolve(answer.trim());
      }
    });
    socket.on("error", reject);
    socket.write(`${line}\n`);
  }).then((answer) => assert.equal(answer, `ok ${line}`));
}

function until(condition, what, timeoutMs = 60000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      if (condition()) {
        clearInterval(timer);
        resolve();
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(timer);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }
    }, 10);
  });
}

/** A ws WebSocket that records, in `events`, when it opened and closed (with the code). */
function recording(events) {
  return class Recording extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      const base = url.split("?")[0];
      this.addEventListener("open", () => events.push({ what: "open", url: base, at: performance.now() }));
      this.addEventListener("close", (event) =>
        events.push({ what: "close", url: base, code: event.code, at: performance.now() })
      );
    }
  };
}

function liveClient(Client, token) {
  const events = [];
  // backoffInitial 2500 ms: a reconnect that waited for a backoff would miss the bound.
  const client = new Client(config.urls, {
    token,
    WebSocket: recording(events),
    backoffInitial: 2500,
    backoffMax: 5000,
  });
  client.events = events;
  client.shown = [];
  client.onmessage = (m) => client.shown.push(m);
  return client;
}

/** Milliseconds from the 1012 close of gw-1 to the next open (which must be gw-2's). */
function backAfterDrain(name, events) {
  const closed = events.findIndex((e) => e.what === "close" && e.url === GW1);
  assert.ok(closed >= 0, `${name}: no close on gw-1: ${JSON.stringify(events)}`);
  assert.equal(events[closed].code, 1012, `${name}: gw-1 closed with ${events[closed].code}`);
  const opened = events.findIndex((e, i) => i > closed && e.what === "open");
  assert.ok(opened > closed, `${name}: never opened again: ${JSON.stringify(events)}`);
  assert.equal(events[opened].url, GW2, `${name}: reopened on ${events[opened].url}`);
  return events[opened].at - events[closed].at;
}

test("after gw-1 drains (1012) both clients are on gw-2 within the bound, nothing lost or doubled", { timeout: 150000 }, async () => {
  const { Client } = await loadServedModule();
  const alice = liveClient(Client, config.tokens.alice);
  const bob = liveClient(Client, config.tokens.bob);
  try {
    await check(alice, bob);
  } finally {
    alice.close();
    bob.close();
  }
});

async function check(alice, bob) {
  await until(() => alice.status === "live" && bob.status === "live", "both clients live");
  assert.equal(alice.events[0].url, GW1);
  assert.equal(bob.events[0].url, GW1);

  const results = new Array(config.total);
  let next = 0;
  let resolved = 0;
  async function worker() {
    while (next < config.total) {
      const i = next++;
      results[i] = await alice.send({ to: config.users.bob, content: `m${i}` });
      resolved += 1;
    }
  }
  const workers = Promise.all(Array.from({ length: config.inFlight }, worker));
  await until(() => resolved >= config.drainAfter, `${config.drainAfter} sends answered`);
  assert.ok(resolved < config.total, "every send answered before the drain began");
  const drained = ask("drain gw-1");
  await workers;
  await drained;
  await until(() => bob.shown.length >= config.total, `bob to see ${config.total} messages`);

  for (const [name, client] of [["alice", alice], ["bob", bob]]) {
    const ms = backAfterDrain(name, client.events);
    console.error(`# ${name} back on gw-2 ${ms.toFixed(1)} ms after the 1012 close`);
    assert.ok(ms < config.backWithinMs, `${name} back after ${ms.toFixed(1)} ms`);
  }
  for (const [i, r] of results.entries()) {
    assert.match(r.msgId, /./, `send ${i} resolved without a message id`);
  }
  assert.equal(new Set(results.map((r) => r.msgId)).size, config.total);
  const ids = bob.shown.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, "bob was shown a message twice");
  assert.deepEqual(new Set(ids), new Set(results.map((r) => r.msgId)));
  for (let k = 1; k < bob.shown.length; k += 1) {
    const [a, b] = [bob.shown[k - 1], bob.shown[k]];
    assert.ok(BigInt(a.seq) < BigInt(b.seq), `seq ${a.seq} shown before ${b.seq}`);
  }
}
