// The JavaScript client with a large group (stored once, seqs "g<group>:<n>"), driven by
// tests/end_to_end/test_client_large_groups.py: two gateways with --large-group 2 and
// --group-join open, the module as gw-1 serves it. Bob's phone takes five posts and a
// private message and closes; pytest says when both streams' acks are stored ("acked"
// over the control connection); bob's laptop, on the other gateway, is shown none of them
// again, only what came after; what the laptop posts reaches bob's next phone, never the
// laptop itself.
import assert from "node:assert/strict";
import { test } from "node:test";

import { controller, e2e, loadServedModule, until as untilEvery } from "./helpers.mjs";

const { config, WebSocket } = e2e();
const [GW1, GW2] = config.urls;
const G = config.group;

const until = (condition, what, timeoutMs = 20000) => untilEvery(condition, what, timeoutMs);

/** One line to pytest over its own control connection (answered "ok <line>"). */
async function ask(line) {
  const control = controller(config.controlPort);
  try {
    await control.ask(line);
  } finally {
    control.close();
  }
}

function open(Client, url, who) {
  const client = new Client(url, { token: config.tokens[who], WebSocket });
  client.shown = [];
  client.onmessage = (m) => client.shown.push(m);
  return client;
}

test("acks per stream hold across two devices of one user in a large group", { timeout: 90000 }, async () => {
  const { Client } = await loadServedModule(config.http, config.moduleFile);
  const alice = open(Client, GW1, "alice");
  const carol = open(Client, GW2, "carol");
  let phone = open(Client, GW1, "bob");
  const clients = [alice, carol, phone];
  try {
    for (const client of [alice, carol, phone]) await client.join(G);
    for (let i = 0; i < 5; i++) await alice.send({ group: G, content: `post ${i}` });
    await alice.send({ to: config.users.bob, content: "private 0" });
    await until(() => phone.shown.length >= 6, "the phone to show 6 messages");
    const posts = phone.shown.filter((m) => m.type === 2);
    assert.deepEqual(posts.map((m) => m.content), [0, 1, 2, 3, 4].map((i) => `post ${i}`));
    assert.deepEqual(posts.map((m) => m.seq), [1, 2, 3, 4, 5].map((n) => `g${G}:${n}`));
    const inbox = phone.shown.filter((m) => m.type === 1);
    assert.deepEqual(inbox.map((m) => m.content), ["private 0"]);
    phone.close(); // acknowledges each stream once more
    await ask(`acked bob ${inbox[0].seq} g${G}:5`);

    const laptop = open(Client, GW2, "bob");
    clients.push(laptop);
    await until(() => laptop.status === "live", "the laptop live");
    await alice.send({ group: G, content: "post 5" });
    await alice.send({ to: config.users.bob, content: "private 1" });
    await until(() => laptop.shown.length >= 2, "the laptop to show 2 messages");
    assert.deepEqual(laptop.shown.map((m) => m.content).sort(), ["post 5", "private 1"]);
    assert.deepEqual(laptop.shown.filter((m) => m.type === 2).map((m) => m.seq), [`g${G}:6`]);
    const laptopInbox = laptop.shown.find((m) => m.type === 1).seq;
    await ask(`acked bob ${laptopInbox} g${G}:6`);

    phone = open(Client, GW1, "bob");
    clients.push(phone);
    await until(() => phone.status === "live", "the second phone live");
    const own = await laptop.send({ group: G, content: "from the laptop" });
    await until(() => phone.shown.length >= 1, "the phone to show the laptop's post");
    assert.deepEqual(phone.shown.map((m) => [m.content, m.id]), [["from the laptop", own.msgId]]);
    await alice.send({ group: G, content: "post 7" });
    await until(() => laptop.shown.length >= 3, "the laptop to show post 7");
    assert.deepEqual(laptop.shown.map((m) => m.content).slice(2), ["post 7"]);
    assert.ok(!laptop.shown.some((m) => m.id === own.msgId), "the laptop was shown its own post");
  } finally {
    for (const client of clients) client.close();
  }
});
