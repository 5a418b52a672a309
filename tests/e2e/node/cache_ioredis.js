// ioredis against the sidecar cache socket: handshake, SET EX, GET, MGET, a pipeline of
// 1,000 commands, TTL, INCR, binary values. Prints one JSON line of observations; the
// Python test asserts on them. Usage: node cache_ioredis.js SOCKET
"use strict";
const Redis = require("ioredis");

async function main() {
  const path = process.argv[2];
  const client = new Redis({ path, lazyConnect: true, maxRetriesPerRequest: 0, connectionName: "ioredis-e2e" });
  await client.connect(); // ioredis's own handshake: CLIENT SETNAME, INFO ready check
  const out = {};
  out.ping = await client.ping();
  out.set = await client.set("e2e:io:a", "hello", "EX", 100);
  out.get = await client.get("e2e:io:a");
  out.ttl = await client.ttl("e2e:io:a");
  out.missing = await client.get("e2e:io:none");
  await client.set("e2e:io:b", "world");
  out.mget = await client.mget("e2e:io:a", "e2e:io:b", "e2e:io:none");
  out.incr = [await client.incr("e2e:io:n"), await client.incr("e2e:io:n"), await client.incrby("e2e:io:n", 40)];
  const binary = Buffer.from([0, 255, 13, 10, 0, 128, 36, 42]);
  await client.set(Buffer.from([1, 0, 13, 10]), binary);
  const back = await client.getBuffer(Buffer.from([1, 0, 13, 10]));
  out.binary = back !== null && Buffer.compare(back, binary) === 0;
  const pipe = client.pipeline();
  for (let i = 0; i < 500; i++) pipe.set(`e2e:io:p${i}`, `v${i}`);
  for (let i = 0; i < 500; i++) pipe.get(`e2e:io:p${i}`);
  const results = await pipe.exec();
  out.pipeline_len = results.length;
  out.pipeline_errors = results.filter(([err]) => err !== null).length;
  out.pipeline_ok = results.slice(500).every(([, v], i) => v === `v${i}`);
  out.name = await client.client("GETNAME");
  try {
    await client.call("NOSUCHCMD", "x");
    out.unknown = null;
  } catch (err) {
    out.unknown = err.message;
  }
  await client.quit();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
