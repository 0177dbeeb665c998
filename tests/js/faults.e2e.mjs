// End to end, on real processes started by tests/end_to_end/test_client_js.py: the module
// the gateway serves at GET /client.js (imported from those very bytes), alice and bob on
// different gateways, many messages in flight while bob's gateway, one of two hubs and
// alice's gateway are SIGKILLed and restarted in turn. Every send resolves with a message
// id; bob sees each message exactly once, in order; a restarted bob sees nothing again.
//
// The pytest side passes CLIENT_E2E (JSON: gateway URLs, tokens, user ids, the control
// port) and CLIENT_TOOLS (where npm put `ws`). It kills and restarts processes when this
// test asks over the control connection ("kill NAME", "acked USER SEQ": one line each,
// answered "ok " and the line once done).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { join } from "node:path";
import { test } from "node:test";

const config = JSON.parse(process.env.CLIENT_E2E);
const require = createRequire(join(process.env.CLIENT_TOOLS, "package.json"));
const WebSocket = require("ws");
const TOTAL = config.total;
const IN_FLIGHT = 50;

/** Import the module from the bytes a gateway serves (and check they are the file's). */
async function loadServedModule() {
  const response = await fetch(`${config.gateways.alice.http}/client.js`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/javascript/);
  const served = Buffer.from(await response.arrayBuffer());
  assert.ok(served.equals(readFileSync(config.moduleFile)), "served bytes differ from the file");
  return import(`data:text/javascript;base64,${served.toString("base64")}`);
}

/** The control connection to pytest, which owns the processes. */
function controller() {
  const socket = net.connect(config.controlPort, "127.0.0.1");
  let buffer = "";
  const waiters = [];
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      waiters.shift()(line);
    }
  });
  const ask = (line) =>
    new Promise((resolve) => {
      waiters.push(resolve);
      socket.write(`${line}\n`);
    }).then((answer) => assert.equal(answer, `ok ${line}`));
  return { ask, close: () => socket.destroy() };
}

function until(condition, what, timeoutMs = 90000) {
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
    }, 20);
  });
}

function liveClient(Client, urls, token) {
  const client = new Client(urls, { token, WebSocket, backoffInitial: 100, backoffMax: 1000 });
  client.shown = [];
  client.onmessage = (m) => client.shown.push(m);
  client.statuses = [];
  client.onstatus = (s) => client.statuses.push(s);
  return client;
}

const progress = (what) => console.error(`# ${new Date().toISOString()} ${what}`);

/** A WebSocket that, like a browser's, does not say why a handshake failed. */
class BrowserLikeWebSocket extends WebSocket {
  get onerror() {
    return super.onerror;
  }

  set onerror(listener) {
    super.onerror = () => listener({});
  }
}

test("a real gateway's 401 refuses the client, seen by ws or (like a browser) by GET /ws", async () => {
  const { Client } = await loadServedModule();
  const forged = `${config.tokens.bob.split(".").slice(0, 2).join(".")}.AAAA`;
  for (const Socket of [WebSocket, BrowserLikeWebSocket]) {
    const client = new Client([config.gateways.bob.ws], { token: forged, WebSocket: Socket });
    await assert.rejects(
      client.send({ to: config.users.alice, content: "x" }),
      (err) => err.code === "unauthorized",
      Socket.name
    );
    assert.equal(client.status, "refused", Socket.name);
  }
  // A gateway that is not there is no refusal: the client keeps trying.
  const statuses = [];
  const client = new Client([config.unreachable], {
    token: config.tokens.bob,
    WebSocket: BrowserLikeWebSocket,
    backoffInitial: 10,
    backoffMax: 20,
  });
  client.onstatus = (s) => statuses.push(s);
  let attempts = 0;
  const Counting = class extends BrowserLikeWebSocket {
    constructor(url) {
      super(url);
      attempts += 1;
    }
  };
  client.WebSocket = Counting;
  await until(() => attempts >= 3, "three attempts at the unreachable gateway", 10000);
  assert.ok(!statuses.includes("refused"), `${statuses}`);
  client.close();
});

test("every send resolves and bob sees each message once, in order, across SIGKILLs", { timeout: 300000 }, async () => {
  const { Client } = await loadServedModule();
  const control = controller();
  const alice = liveClient(Client, [config.gateways.alice.ws], config.tokens.alice);
  const bob = liveClient(Client, [config.gateways.bob.ws], config.tokens.bob);
  await until(() => alice.status === "live" && bob.status === "live", "both clients live");

  // The faults, in turn, while messages flow: each waits for more sends to be answered.
  let resolved = 0;
  const faults = (async () => {
    for (const [name, after] of [["bob", 0.15], ["hub-1", 0.4], ["alice", 0.65]]) {
      await until(() => resolved >= TOTAL * after, `${after * 100}% of the sends answered`);
      progress(`kill ${name}: bob ${bob.shown.length}, alice sent ${next}`);
      await control.ask(`kill ${name}`);
      progress(`${name} restarted`);
    }
  })();

  const results = new Array(TOTAL);
  let next = 0;
  async function worker() {
    while (next < TOTAL) {
      const i = next++;
      results[i] = await alice.send({ to: config.users.bob, content: `m${i}` });
      resolved += 1;
    }
  }
  const ticker = setInterval(() => {
    progress(`alice ${alice.status} ${resolved}/${next}, bob ${bob.status} ${bob.shown.length}`);
  }, 2000);
  try {
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    await faults;
  } finally {
    clearInterval(ticker);
  }
  await until(() => bob.shown.length >= TOTAL, `bob to see ${TOTAL} messages`);

  for (const [i, r] of results.entries()) {
    assert.match(r.msgId, /./, `send ${i} resolved without a message id`);
    assert.match(r.time, /^\d+$/);
  }
  const ids = bob.shown.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, "bob was shown a message twice");
  assert.deepEqual(new Set(ids), new Set(results.map((r) => r.msgId)));
  assert.deepEqual(
    new Set(bob.shown.map((m) => m.content)),
    new Set(Array.from({ length: TOTAL }, (_, i) => `m${i}`))
  );
  // In order: bob's inbox positions rise, and so do the gateway's times.
  for (let k = 1; k < bob.shown.length; k += 1) {
    const [a, b] = [bob.shown[k - 1], bob.shown[k]];
    assert.ok(BigInt(a.seq) < BigInt(b.seq), `seq ${a.seq} shown before ${b.seq}`);
    assert.ok(BigInt(a.time) <= BigInt(b.time), `time ${a.time} shown before ${b.time}`);
    assert.equal(b.from, config.users.alice);
  }
  // The faults happened to these clients: each reconnected.
  assert.ok(bob.statuses.includes("reconnecting"), `bob: ${bob.statuses}`);
  assert.ok(alice.statuses.includes("reconnecting"), `alice: ${alice.statuses}`);

  // A restarted client shows nothing already shown: bob acknowledged all of it (the
  // gateway writes acknowledgements to Redis after the frame: wait until it has).
  const last = bob.shown.at(-1).seq;
  await until(() => bob.core.streams.get("").acked >= BigInt(last), "bob's last ack sent");
  await control.ask(`acked bob ${last}`);
  bob.close();
  const bobAgain = liveClient(Client, [config.gateways.bob.ws], config.tokens.bob);
  await until(() => bobAgain.status === "live", "the restarted bob live");
  assert.deepEqual(bobAgain.shown, [], "a restarted client was shown old messages again");
  bobAgain.close();
  alice.close();
  control.close();
});
