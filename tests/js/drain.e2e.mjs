// A real drain, driven by tests/end_to_end/test_client_drain.py: alice and bob on
// [gw-1, gw-2] (the module as gw-2 serves it, imported from those bytes), alice sending to
// bob with many in flight; this test asks pytest to SIGTERM gw-1 ("drain gw-1" over the
// control connection). Each client's sockets are recorded (open, and close with its code):
// after gw-1's 1012 close, the next socket to open is on gw-2, within the bound given.
// Every send resolves with a message id; bob is shown each message once, in order.
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
const [GW1, GW2] = config.urls;
const WAIT_MS = 60000;

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
  const { Client } = await loadServedModule(config.http, config.moduleFile);
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
  const live = () => alice.status === "live" && bob.status === "live";
  await until(live, "both clients live", WAIT_MS);
  assert.equal(alice.events[0].url, GW1);
  assert.equal(bob.events[0].url, GW1);

  const run = sendMany(alice, config.users.bob, config.total, config.inFlight);
  const answered = `${config.drainAfter} sends answered`;
  await until(() => run.resolved >= config.drainAfter, answered, WAIT_MS);
  assert.ok(run.resolved < config.total, "every send answered before the drain began");
  const control = controller(config.controlPort);
  try {
    const drained = control.ask("drain gw-1");
    await run.done;
    await drained;
  } finally {
    control.close();
  }
  const all = `bob to see ${config.total} messages`;
  await until(() => bob.shown.length >= config.total, all, WAIT_MS);
  const results = run.results;

  for (const [name, client] of [["alice", alice], ["bob", bob]]) {
    const ms = backAfterDrain(name, client.events);
    console.error(`# ${name} back on gw-2 ${ms.toFixed(1)} ms after the 1012 close`);
    assert.ok(ms < config.backWithinMs, `${name} back after ${ms.toFixed(1)} ms`);
  }
  assertEachShownOnceInOrder(results, bob.shown);
  assert.equal(new Set(results.map((r) => r.msgId)).size, config.total);
}
