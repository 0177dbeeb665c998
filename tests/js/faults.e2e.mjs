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
import { test } from "node:test";

import {
  assertEachShownOnceInOrder,
  controller,
  e2e,
  loadServedModule,
  sendMany,
  until,
} from "./helpers.mjs";

const { config, WebSocket } = e2e();
const TOTAL = config.total;
const IN_FLIGHT = 50;
const WAIT_MS = 90000;
const loadModule = () => loadServedModule(config.gateways.alice.http, config.moduleFile);

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
  const { Client } = await loadModule();
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
  await until(() => attempts >= 3, "three attempts at the unreachable gateway", 10000, 20);
  assert.ok(!statuses.includes("refused"), `${statuses}`);
  client.close();
});

test("every send resolves and bob sees each message once, in order, across SIGKILLs", { timeout: 300000 }, async () => {
  const { Client } = await loadModule();
  const control = controller(config.controlPort);
  const alice = liveClient(Client, [config.gateways.alice.ws], config.tokens.alice);
  const bob = liveClient(Client, [config.gateways.bob.ws], config.tokens.bob);
  const live = () => alice.status === "live" && bob.status === "live";
  await until(live, "both clients live", WAIT_MS, 20);

  const run = sendMany(alice, config.users.bob, TOTAL, IN_FLIGHT);
  // The faults, in turn, while messages flow: each waits for more sends to be answered.
  const faults = (async () => {
    for (const [name, after] of [["bob", 0.15], ["hub-1", 0.4], ["alice", 0.65]]) {
      const answered = `${after * 100}% of the sends answered`;
      await until(() => run.resolved >= TOTAL * after, answered, WAIT_MS, 20);
      progress(`kill ${name}: bob ${bob.shown.length}, alice sent ${run.next}`);
      await control.ask(`kill ${name}`);
      progress(`${name} restarted`);
    }
  })();
  const ticker = setInterval(() => {
    const sent = `${run.resolved}/${run.next}`;
    progress(`alice ${alice.status} ${sent}, bob ${bob.status} ${bob.shown.length}`);
  }, 2000);
  try {
    await run.done;
    await faults;
  } finally {
    clearInterval(ticker);
  }
  await until(() => bob.shown.length >= TOTAL, `bob to see ${TOTAL} messages`, WAIT_MS, 20);

  const results = run.results;
  assertEachShownOnceInOrder(results, bob.shown);
  for (const r of results) assert.match(r.time, /^\d+$/);
  assert.deepEqual(
    new Set(bob.shown.map((m) => m.content)),
    new Set(Array.from({ length: TOTAL }, (_, i) => `m${i}`))
  );
  // In order: bob's inbox positions rise (checked above), and so do the gateway's times.
  for (let k = 1; k < bob.shown.length; k += 1) {
    const [a, b] = [bob.shown[k - 1], bob.shown[k]];
    assert.ok(BigInt(a.time) <= BigInt(b.time), `time ${a.time} shown before ${b.time}`);
    assert.equal(b.from, config.users.alice);
  }
  // The faults happened to these clients: each reconnected.
  assert.ok(bob.statuses.includes("reconnecting"), `bob: ${bob.statuses}`);
  assert.ok(alice.statuses.includes("reconnecting"), `alice: ${alice.statuses}`);

  // A restarted client shows nothing already shown: bob acknowledged all of it (the
  // gateway writes acknowledgements to Redis after the frame: wait until it has).
  const last = bob.shown.at(-1).seq;
  const ackSent = () => bob.core.streams.get("").acked >= BigInt(last);
  await until(ackSent, "bob's last ack sent", WAIT_MS, 20);
  await control.ask(`acked bob ${last}`);
  bob.close();
  const bobAgain = liveClient(Client, [config.gateways.bob.ws], config.tokens.bob);
  await until(() => bobAgain.status === "live", "the restarted bob live", WAIT_MS, 20);
  assert.deepEqual(bobAgain.shown, [], "a restarted client was shown old messages again");
  bobAgain.close();
  alice.close();
  control.close();
});
