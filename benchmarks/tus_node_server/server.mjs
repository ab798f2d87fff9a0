// @tus/server + @tus/file-store, as a peer for benchmarks/suite.py.
//   node server.mjs PORT DATASTORE_DIR
// Defaults everywhere (no fsync: neither @tus/server nor @tus/file-store ever calls it).
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const port = Number(process.argv[2] || 1080)
const directory = process.argv[3] || './files'

const server = new Server({
  path: '/files',
  datastore: new FileStore({ directory }),
})

server.listen({ host: '127.0.0.1', port }, () => {
  console.log(`tus-node-server listening http://127.0.0.1:${port}/files`)
})

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
