// End to end, on a gateway started by tests/end_to_end/test_client_js.py (the module as it
// serves it, imported from those bytes): alice leaves bob `total` messages; bob's first
// client is closed from its onmessage once it got `closeAfter` of them, in the middle of
// its connect replay. close() acknowledges what onmessage got, so once that is stored
// (asked of pytest: "acked SEQ", answered "ok " and the line), bob's next client is shown
// the rest and none of those again.
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
const WAIT_MS = 60000;

test("a client closed in its connect replay: the next one is shown nothing it showed", { timeout: 120000 }, async () => {
  const { Client } = await loadServedModule(config.http, config.moduleFile);
  const open = (token) => new Client([config.ws], { token, WebSocket });
  const alice = open(config.tokens.alice);
  let results;
  try {
    const run = sendMany(alice, config.users.bob, config.total, 50);
    await run.done;
    results = run.results;
  } finally {
    alice.close();
  }

  const first = open(config.tokens.bob);
  const shownFirst = [];
  let statusAtClose = null;
  first.onmessage = (m) => {
    shownFirst.push(m);
    if (shownFirst.length === config.closeAfter) {
      statusAtClose = first.status;
      first.close();
    }
  };
  await until(() => first.status === "closed", "bob's first client closed", WAIT_MS);
  assert.equal(statusAtClose, "replaying", "closed in the middle of its connect replay");
  assert.equal(shownFirst.length, config.closeAfter);
  const control = controller(config.controlPort);
  try {
    await control.ask(`acked ${shownFirst.at(-1).seq}`);
  } finally {
    control.close();
  }

  const second = open(config.tokens.bob);
  const shownSecond = [];
  second.onmessage = (m) => shownSecond.push(m);
  try {
    const rest = config.total - config.closeAfter;
    await until(() => second.status === "live", "bob's next client live", WAIT_MS);
    await until(() => shownSecond.length >= rest, `${rest} messages for the next client`, WAIT_MS);
  } finally {
    second.close();
  }
  const before = new Set(shownFirst.map((m) => m.id));
  const again = shownSecond.filter((m) => before.has(m.id)).map((m) => m.seq);
  assert.deepEqual(again, [], "shown again by bob's next client");
  assertEachShownOnceInOrder(results, [...shownFirst, ...shownSecond]);
});
