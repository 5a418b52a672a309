// node-redis (npm `redis`) against the sidecar cache socket: the same checks as
// cache_ioredis.js through this client's own handshake. Usage: node cache_node_redis.js SOCKET
"use strict";
const { createClient, commandOptions } = require("redis");

async function main() {
  const path = process.argv[2];
  const client = createClient({ socket: { path, reconnectStrategy: false }, name: "node-redis-e2e" });
  client.on("error", (err) => {
    console.error("client error", err);
  });
  await client.connect();
  const out = {};
  out.ping = await client.ping();
  out.set = await client.set("e2e:nr:a", "hello", { EX: 100 });
  out.get = await client.get("e2e:nr:a");
  out.ttl = await client.ttl("e2e:nr:a");
  out.missing = await client.get("e2e:nr:none");
  await client.set("e2e:nr:b", "world");
  out.mget = await client.mGet(["e2e:nr:a", "e2e:nr:b", "e2e:nr:none"]);
  out.incr = [await client.incr("e2e:nr:n"), await client.incr("e2e:nr:n"), await client.incrBy("e2e:nr:n", 40)];
  const binary = Buffer.from([0, 255, 13, 10, 0, 128, 36, 42]);
  await client.set(Buffer.from([2, 0, 13, 10]), binary);
  const back = await client.get(commandOptions({ returnBuffers: true }), Buffer.from([2, 0, 13, 10]));
  out.binary = back !== null && Buffer.compare(back, binary) === 0;
  const multi = client.multi(); // node-redis: execAsPipeline sends no MULTI/EXEC
  for (let i = 0; i < 500; i++) multi.set(`e2e:nr:p${i}`, `v${i}`);
  for (let i = 0; i < 500; i++) multi.get(`e2e:nr:p${i}`);
  const results = await multi.execAsPipeline();
  out.pipeline_len = results.length;
  out.pipeline_ok = results.slice(500).every((v, i) => v === `v${i}`);
  out.name = await client.clientGetName();
  try {
    await client.sendCommand(["NOSUCHCMD", "x"]);
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
