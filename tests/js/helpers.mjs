// What the client's Node tests share: waiting on a condition, and for the end-to-end tests
// (run by pytest through tests/node.py's node_e2e, which passes CLIENT_E2E and
// CLIENT_TOOLS) their settings, ws, the module as a gateway serves it, the control
// connection to pytest (which owns the processes), and the sends and checks they all make.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { join } from "node:path";

/** Resolves once `condition()` is true (checked every `everyMs`); rejects after `timeoutMs`. */
export function until(condition, what, timeoutMs, everyMs = 10) {
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
    }, everyMs);
  });
}

/** The end-to-end test's settings from pytest (CLIENT_E2E, JSON) and the `ws` WebSocket
 * that npm installed in CLIENT_TOOLS. */
export function e2e() {
  const config = JSON.parse(process.env.CLIENT_E2E);
  const require = createRequire(join(process.env.CLIENT_TOOLS, "package.json"));
  return { config, WebSocket: require("ws") };
}

/** Import the module from the bytes the gateway at `http` serves (checked to be the
 * file's), so that what is tested is what a browser loads. */
export async function loadServedModule(http, moduleFile) {
  const response = await fetch(`${http}/client.js`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/javascript/);
  const served = Buffer.from(await response.arrayBuffer());
  assert.ok(served.equals(readFileSync(moduleFile)), "served bytes differ from the file");
  return import(`data:text/javascript;base64,${served.toString("base64")}`);
}

/** The control connection to pytest: `ask(line)` resolves once pytest has done what the
 * line asks and answered "ok <line>". */
export function controller(port) {
  const socket = net.connect(port, "127.0.0.1");
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

/** `total` sends from `client` to user `to` ("m0", "m1", ...), `inFlight` at a time. Read
 * `resolved` and `next` while they run; `done` resolves with them, `results` in order. */
export function sendMany(client, to, total, inFlight) {
  const run = { results: new Array(total), next: 0, resolved: 0 };
  async function worker() {
    while (run.next < total) {
      const i = run.next++;
      run.results[i] = await client.send({ to, content: `m${i}` });
      run.resolved += 1;
    }
  }
  run.done = Promise.all(Array.from({ length: inFlight }, worker));
  return run;
}

/** Every send resolved with a message id, and `shown` holds each of those messages once,
 * in inbox order. */
export function assertEachShownOnceInOrder(results, shown) {
  for (const [i, r] of results.entries()) {
    assert.match(r.msgId, /./, `send ${i} resolved without a message id`);
  }
  const ids = shown.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, "a message was shown twice");
  assert.deepEqual(new Set(ids), new Set(results.map((r) => r.msgId)));
  for (let k = 1; k < shown.length; k += 1) {
    const [a, b] = [shown[k - 1], shown[k]];
    assert.ok(BigInt(a.seq) < BigInt(b.seq), `seq ${a.seq} shown before ${b.seq}`);
  }
}
