// One side of bench/client_js.py: the JavaScript client's own CPU per message, read with
// process.cpuUsage() in this Node process (the gateways' CPU is not in it).
//
//   node bench/client_js.mjs ROLE IMPL '{"url":..., "token":..., "peer":..., "count":...}'
//
// ROLE: "send" (COUNT messages to PEER, WINDOW in flight, each awaited until its type 10),
// "receive" (until COUNT messages arrived; prints "ready" once live) or "core" (the pure
// ClientCore alone, fed COUNT message frames and acknowledging, no sockets).
// IMPL: "client" (im_gateway/static/client.js) or "raw" (ws and JSON by hand: client ids,
// type 10 matching, type 11 every 100 ms, nothing else), the floor the client is
// compared with. Prints one JSON line: {"role", "impl", "count", "cpuUs", "wallS"}.
import { createRequire } from "node:module";
import { join } from "node:path";

import { Client, ClientCore } from "../im_gateway/static/client.js";

const [role, impl, json] = process.argv.slice(2);
const args = JSON.parse(json);
const require = createRequire(join(args.tools, "package.json"));
const WebSocket = require("ws");

function report(count, cpu0, t0) {
  const cpu = process.cpuUsage(cpu0);
  const wallS = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ role, impl, count, cpuUs: cpu.user + cpu.system, wallS }));
}

/** The same job without the library: what any client must at least do. */
class Raw {
  constructor(url, token) {
    this.ws = new WebSocket(`${url}?token=${encodeURIComponent(token)}`);
    this.waiting = new Map();
    this.counter = 0;
    this.seq = "0";
    this.acked = "0";
    this.onmessage = null;
    this.live = new Promise((resolve) => {
      this.ws.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === 10) {
          const resolve = this.waiting.get(frame.id);
          this.waiting.delete(frame.id);
          if (resolve) resolve(frame.msgId);
        } else if (frame.type === 99 && this.waiting.has(frame.id)) {
          throw new Error(`refused: ${event.data}`); // the floor does not retry
        } else if (frame.type === 1 || frame.type === 2) {
          this.seq = frame.seq;
          if (this.onmessage) this.onmessage(frame);
        } else if (frame.type === 14) {
          resolve();
        }
      };
    });
    this.timer = setInterval(() => {
      if (this.seq !== this.acked && this.ws.readyState === 1) {
        this.ws.send(JSON.stringify({ type: 11, seq: this.seq }));
        this.acked = this.seq;
      }
    }, 100);
  }

  send({ to, content }) {
    this.counter += 1;
    const id = `r-${process.pid}-${this.counter}`; // new per run: the gateway dedupes ids
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.ws.send(JSON.stringify({ type: 1, id, to, contentType: 0, content }));
    });
  }

  close() {
    clearInterval(this.timer);
    this.ws.close();
  }
}

async function connect() {
  if (impl === "raw") {
    const raw = new Raw(args.url, args.token);
    await raw.live;
    return raw;
  }
  const client = new Client(args.url, { token: args.token, WebSocket });
  await new Promise((resolve) => {
    client.onstatus = (s) => s === "live" && resolve();
  });
  return client;
}

async function send() {
  const client = await connect();
  const content = "x".repeat(args.size);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < args.count) {
      next += 1;
      await client.send({ to: args.peer, content });
    }
  };
  await Promise.all(Array.from({ length: args.window }, worker));
  report(args.count, cpu0, t0);
  client.close();
}

async function receive() {
  const client = await connect();
  let got = 0;
  let cpu0;
  let t0;
  await new Promise((resolve) => {
    client.onmessage = () => {
      if (got === 0) {
        cpu0 = process.cpuUsage();
        t0 = performance.now();
      }
      got += 1;
      if (got === args.count) resolve();
    };
    console.log("ready");
  });
  report(args.count - 1, cpu0, t0); // from the first arrival: count - 1 intervals
  client.close();
}

function core() {
  const c = new ClientCore({ me: "1" });
  c.opened();
  c.receive({ type: 14, seq: "0" });
  const content = "x".repeat(args.size);
  const frames = Array.from({ length: args.count }, (_, i) =>
    JSON.stringify({ type: 1, id: `m${i}`, from: 2, to: 1, contentType: 0, time: "1", content, seq: String(i + 1) })
  );
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < frames.length; i += 1) {
    c.receive(JSON.parse(frames[i]));
    c.drain();
    if (i % 100 === 0) c.acks();
  }
  report(args.count, cpu0, t0);
}

if (role === "send") await send();
else if (role === "receive") await receive();
else core();
