'use strict'
// pino writing to the sidecar's logs socket the two ways the README gives:
//   stream: pino(net.createConnection(path)), in the app's own thread; `end()` at exit
//           flushes every buffered line before the process exits
//   pino-socket: the pino-socket transport (a worker thread) with mode 'tcp' (a stream
//           socket; its default is udp), unixsocket, reconnect and recovery
//   stdout: pino's default destination, for `node app.js | sidecar pipe` (SOCKET unused)
// Usage: node logs_pino_socket.js stream|pino-socket|stdout SOCKET COUNT TRACE SPAN
// Prints {"sent": N} once every line is handed on (to stderr for `stdout`).
const net = require('net')
const pino = require('pino')

const [way, socketPath, countArg, traceId, spanId] = process.argv.slice(2)
const count = Number(countArg)

let logger
let finish
if (way === 'stdout') {
  logger = pino({ level: 'debug' })
  finish = (done) => logger.flush(done)
} else if (way === 'stream') {
  const socket = net.createConnection(socketPath)
  logger = pino({ level: 'debug' }, socket)
  finish = (done) => socket.end(done)
} else {
  const transport = pino.transport({
    target: 'pino-socket',
    options: { unixsocket: socketPath, mode: 'tcp', reconnect: true, recovery: true }
  })
  logger = pino({ level: 'debug' }, transport)
  // pino-socket destroys its socket when the transport ends, dropping lines the socket has
  // not written yet: give it time to drain before ending
  finish = (done) => setTimeout(() => {
    process.on('exit', done)
    logger.flush(() => transport.end())
  }, 1000)
}

const agent = logger.child({ agent: 'planner', run: { id: 'run-1' } })
for (let seq = 0; seq < count; seq++) {
  agent.info({ seq, trace_id: traceId, span_id: spanId, trace_flags: '01' }, 'planned step')
}
const err = new Error('tool timed out')
err.code = 'ETIMEDOUT'
agent.error({ err, seq: count }, 'tool failed')
agent.debug({ seq: count + 1 }, 'done')

const report = way === 'stdout' ? process.stderr : process.stdout
finish(() => report.write(JSON.stringify({ sent: count + 2 }) + '\n'))
