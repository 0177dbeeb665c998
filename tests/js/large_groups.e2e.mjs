// The JavaScript client with a large group (stored once, seqs "g<group>:<n>"), driven by
// tests/end_to_end/test_client_large_groups.py: two gateways with --large-group 2 and
// --group-join open, the module as gw-1 serves it. Bob's phone takes five posts and a
// private message and closes; pytest says when both streams' acks are stored ("acked"
// over the control connection); bob's laptop, on the other gateway, is shown none of them
// again, only what came after; what the laptop posts reaches bob's next phone, never the
// laptop itself. Then two devices away (gw-2 killed and restarted: "kill 2", "restart 2")
// while the user's other device acknowledged posts of a large group: back, each is shown
// them, once, in order (the connect marker's "groups" says where the user is).
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

function open(Client, url, who, options = {}) {
  const token = typeof who === "string" ? config.tokens[who] : who.token;
  const client = new Client(url, { token, WebSocket, ...options });
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

/** A user's three clients for one of the "away" tests: alice and carol on gw-1 (members,
 * so that bob's join makes the group large), bob's laptop on gw-2 (reconnecting fast). */
function away(Client, users) {
  const token = (name) => ({ token: users.tokens[name] });
  const fast = { backoffInitial: 100, backoffMax: 500 };
  return {
    alice: open(Client, GW1, token("alice")),
    carol: open(Client, GW1, token("carol")),
    laptop: open(Client, GW2, token("bob"), fast),
    phone: () => open(Client, GW1, token("bob")),
  };
}

/** The laptop shows `posts` (the contents, in order) and nothing more, once another post
 * came after them (so a repeat, or a late one, would have shown by then). */
async function showsExactly(alice, laptop, group, posts) {
  const count = posts.length;
  await until(() => laptop.shown.length >= count, `the laptop to show ${count} posts`);
  await alice.send({ group, content: "after" });
  await until(() => laptop.shown.some((m) => m.content === "after"), "the laptop to show 'after'");
  const expected = [...posts, "after"];
  assert.deepEqual(laptop.shown.map((m) => m.content), expected);
  const seqs = laptop.shown.map((m) => m.seq);
  assert.deepEqual(seqs, expected.map((_, i) => `g${group}:${i + 1}`));
}

test("a device away while its user joined a large group is shown the posts another device acknowledged", { timeout: 90000 }, async () => {
  // The laptop (gw-2) is away while bob's phone joins, making the group large, and takes
  // and acknowledges three posts. Back, the connect replay starts after the phone's
  // position (nothing), and its marker lists the group: the laptop, which has no
  // position in that stream, asks for it from bob's join.
  const { Client } = await loadServedModule(config.http, config.moduleFile);
  const users = config.away;
  const G = users.group;
  const { alice, carol, laptop, phone: openPhone } = away(Client, users);
  const clients = [alice, carol, laptop];
  try {
    await alice.join(G);
    await carol.join(G);
    await until(() => laptop.status === "live", "the laptop live");
    await ask("kill 2");
    await until(() => laptop.status === "reconnecting", "the laptop to lose gw-2");
    const phone = openPhone();
    clients.push(phone);
    await phone.join(G); // three members: stored once
    for (let i = 0; i < 3; i++) await alice.send({ group: G, content: `post ${i}` });
    await until(() => phone.shown.length >= 3, "the phone to show 3 posts");
    phone.close(); // acknowledges g:3
    await ask(`acked away-bob 0 g${G}:3`);
    await ask("restart 2");
    await showsExactly(alice, laptop, G, ["post 0", "post 1", "post 2"]);
  } finally {
    for (const client of clients) client.close();
  }
});

test("a device away while another device acknowledged more of a stream it had shown is shown the rest", { timeout: 90000 }, async () => {
  // The laptop shows posts 1 and 2 and acknowledges them; away (gw-2 killed), bob's phone
  // takes and acknowledges 3 to 5. Back, the connect replay starts after 5: the marker
  // says "g:5", and the laptop asks from its own position, 2.
  const { Client } = await loadServedModule(config.http, config.moduleFile);
  const users = config.behind;
  const G = users.group;
  const { alice, carol, laptop, phone: openPhone } = away(Client, users);
  const clients = [alice, carol, laptop];
  try {
    for (const client of [alice, carol, laptop]) await client.join(G);
    for (let i = 0; i < 2; i++) await alice.send({ group: G, content: `post ${i}` });
    await until(() => laptop.shown.length >= 2, "the laptop to show 2 posts");
    await ask(`acked behind-bob 0 g${G}:2`);
    await ask("kill 2");
    await until(() => laptop.status === "reconnecting", "the laptop to lose gw-2");
    const phone = openPhone();
    clients.push(phone);
    await until(() => phone.status === "live", "the phone live");
    for (let i = 2; i < 5; i++) await alice.send({ group: G, content: `post ${i}` });
    await until(() => phone.shown.length >= 3, "the phone to show 3 posts");
    assert.deepEqual(phone.shown.map((m) => m.content), ["post 2", "post 3", "post 4"]);
    phone.close(); // acknowledges g:5
    await ask(`acked behind-bob 0 g${G}:5`);
    await ask("restart 2");
    await showsExactly(alice, laptop, G, [0, 1, 2, 3, 4].map((i) => `post ${i}`));
  } finally {
    for (const client of clients) client.close();
  }
});
