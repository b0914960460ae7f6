/**
 * HTTP-like text traffic for bench/nic-services (case 6), run inside a namespace with
 * `node dist/bench/support/http-peer.js ...`:
 *
 *   server ADDRESS PORT                 HTTP/1.1 keep-alive server: text/html bodies of 1–16 KiB
 *   client URL SECONDS CONNECTIONS      keep-alive GETs with browser-like headers (and a POST with
 *                                       a text form body every 8th request) over CONNECTIONS
 *                                       connections for SECONDS; prints {requests, bytes, seconds}
 *
 * Bodies are words and markup (what a page looks like to the DPI), seeded, so runs are alike.
 */
import { Agent, createServer, request } from 'node:http'
import { seededRandom } from '../../test/support/random.ts'
import { clientRequest, pages as makePages, responseHeaders } from './http-text.ts'

function server(address: string, port: number): void {
  const random = seededRandom(0x4877)
  const pages = makePages(random)
  let n = 0
  createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    req.resume()
    req.on('end', () => {
      const body = pages[n++ % pages.length]
      res.writeHead(200, responseHeaders(body))
      res.end(body)
    })
  }).listen(port, address)
}

async function client(url: string, seconds: number, connections: number): Promise<void> {
  const random = seededRandom(0x4378)
  const agent = new Agent({ keepAlive: true, maxSockets: connections })
  const target = new URL(url)
  let requests = 0
  let bytes = 0
  const end = performance.now() + seconds * 1000
  const t0 = performance.now()
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const r = clientRequest(random, requests)
      const req = request(
        {
          host: target.hostname,
          port: target.port,
          path: r.path,
          method: r.method,
          agent,
          headers: r.headers,
        },
        (res) => {
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length
          })
          res.on('end', () => {
            requests++
            resolve()
          })
          res.on('error', reject)
        },
      )
      req.on('error', reject)
      req.end(r.body)
    })
  const loop = async (): Promise<void> => {
    while (performance.now() < end) await one()
  }
  await Promise.all(Array.from({ length: connections }, loop))
  agent.destroy()
  console.log(JSON.stringify({ requests, bytes, seconds: (performance.now() - t0) / 1000 }))
}

const [mode, a, b, c] = process.argv.slice(2)
if (mode === 'server') server(a, Number(b))
else if (mode === 'client') await client(a, Number(b), Number(c))
else {
  console.error('usage: http-peer server ADDRESS PORT | client URL SECONDS CONNECTIONS')
  process.exitCode = 2
}
