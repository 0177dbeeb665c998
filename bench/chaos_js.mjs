// The JavaScript devices of bench/chaos.py (--js-devices): one Node process runs a
// `Client` of im_gateway/static/client.js per device, driven by the soak over stdin and
// stdout, one JSON object a line (bench/chaos_js.py is the other end).
//
//   node bench/chaos_js.mjs TOOLS        # TOOLS: the folder whose node_modules has `ws`
//
// Commands (stdin):
//   {"op":"open","dev":D,"urls":[...],"token":T}       a new Client (an app start)
//   {"op":"send","dev":D,"req":R,"to":U|"group":G,"content":C}
//   {"op":"join"|"leave","dev":D,"req":R,"group":G}
//   {"op":"close","dev":D,"req":R}                     client.close() (an app restart)
// Events (stdout):
//   {"ev":"answer","req":R,"clientId":..,"msgId":..,"time":..}   a send's type 10
//   {"ev":"answer","req":R,"code":..,"message":..}               its rejection
//   {"ev":"answer","req":R}                                      a join, leave or close done
//   {"ev":"message","dev":D,"message":{id,from,to,type,contentType,time,content,seq}}
//   {"ev":"url","dev":D,"url":URL|null}   the device's connection (null: none open)
//   {"ev":"live","dev":D}                  its first connect replay ended (once per client)
// A device's events come in the order the client made them: its messages before the
// answer to its close, and none after. The end of stdin closes every client and exits.
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { Client } from "../im_gateway/static/client.js";

const require = createRequire(join(process.argv[2], "package.json"));
const WebSocket = require("ws");

const clients = new Map(); // dev -> Client

/** A line in the log (stderr): what each device's client said, with the time. */
function log(line) {
  console.error(`${new Date().toISOString()} ${line}`);
}

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

/** The URL of the client's open connection, or null (from its state: the client says
 * only its status, and its URL list index moves on when a connection is lost). */
function currentUrl(client) {
  if (client.status !== "replaying" && client.status !== "live") return null;
  return client.urls[client.urlIndex % client.urls.length];
}

function open({ dev, urls, token }) {
  const client = new Client(urls, { token, WebSocket });
  let url = null;
  let live = false;
  client.onstatus = (status) => {
    log(`${dev}: ${status}`);
    if (status === "live" && !live && clients.get(dev) === client) {
      live = true;
      emit({ ev: "live", dev });
    }
    const now = currentUrl(client);
    if (now !== url && clients.get(dev) === client) {
      url = now;
      emit({ ev: "url", dev, url });
    }
  };
  client.onmessage = (m) => {
    const { id, from, to, type, contentType, time, content, seq } = m;
    emit({ ev: "message", dev, message: { id, from, to, type, contentType, time, content, seq } });
  };
  client.onerror = (err) => log(`${dev}: type 99 for no request: ${err.message}`);
  client.ontruncated = (seq) => log(`${dev}: history truncated at ${seq}`);
  clients.set(dev, client);
}

function answer(req, promise) {
  promise.then(
    (sent) => emit({ ev: "answer", req, ...(sent || {}) }),
    (err) => emit({ ev: "answer", req, code: String(err.code || "error"), message: String(err.message) })
  );
}

function command(cmd) {
  if (cmd.op === "open") {
    open(cmd);
    return;
  }
  const client = clients.get(cmd.dev);
  if (!client) {
    emit({ ev: "answer", req: cmd.req, code: "closed", message: `no device ${cmd.dev}` });
  } else if (cmd.op === "send") {
    const target = cmd.group === undefined ? { to: cmd.to } : { group: cmd.group };
    answer(cmd.req, client.send({ ...target, content: cmd.content }));
  } else if (cmd.op === "join" || cmd.op === "leave") {
    answer(cmd.req, client[cmd.op](cmd.group).then(() => null));
  } else if (cmd.op === "close") {
    clients.delete(cmd.dev);
    client.close();
    emit({ ev: "answer", req: cmd.req });
  } else {
    throw new Error(`unknown command ${JSON.stringify(cmd)}`);
  }
}

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => command(JSON.parse(line)));
input.on("close", () => {
  for (const client of clients.values()) client.close();
  clients.clear();
  process.exit(0);
});
