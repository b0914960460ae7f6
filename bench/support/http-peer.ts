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

const WORDS = [
  'the',
  'account',
  'search',
  'result',
  'index',
  'script',
  'style',
  'image',
  'session',
  'value',
  'network',
  'stream',
  'content',
  'server',
  'request',
  'user',
  'page',
  'data',
]

function page(random: () => number, size: number): Buffer {
  let s = '<!DOCTYPE html><html><head><title>bench</title></head><body>\n'
  while (s.length < size) {
    const w = WORDS[Math.floor(random() * WORDS.length)]
    s +=
      random() < 0.1
        ? `<p class="${w}"><a href="/${w}/${Math.floor(random() * 1e4)}">${w}</a></p>\n`
        : `${w} `
  }
  return Buffer.from(s.slice(0, size), 'latin1')
}

function server(address: string, port: number): void {
  const random = seededRandom(0x4877)
  const pages = Array.from({ length: 64 }, (_, k) => page(random, 1024 * (1 + (k % 16))))
  let n = 0
  createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    req.resume()
    req.on('end', () => {
      const body = pages[n++ % pages.length]
      res.writeHead(200, {
        'Content-Type': 'text/html; charset=utf-8',
        'Content-Length': body.length,
        'Cache-Control': 'no-cache',
        Server: 'bench/1.0',
      })
      res.end(body)
    })
  }).listen(port, address)
}

async function client(url: string, seconds: number, connections: number): Promise<void> {
  const random = seededRandom(0x4378)
  const agent = new Agent({ keepAlive: true, maxSockets: connections })
  const target = new URL(url)
  const form = Buffer.from(
    Array.from({ length: 24 }, (_, k) => `${WORDS[k % WORDS.length]}=${WORDS[(k * 7) % WORDS.length]}`).join(
      '&',
    ),
  )
  let requests = 0
  let bytes = 0
  const end = performance.now() + seconds * 1000
  const t0 = performance.now()
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const post = requests % 8 === 7
      const path = `/${WORDS[Math.floor(random() * WORDS.length)]}/${WORDS[Math.floor(random() * WORDS.length)]}.php?id=${Math.floor(random() * 1e6)}`
      const req = request(
        {
          host: target.hostname,
          port: target.port,
          path,
          method: post ? 'POST' : 'GET',
          agent,
          headers: {
            Host: `www.${WORDS[requests % WORDS.length]}.example`,
            'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
            Accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
            'Accept-Language': 'en-US,en;q=0.5',
            Cookie: `session=${Math.floor(random() * 1e12).toString(36)}; theme=light`,
            ...(post && {
              'Content-Type': 'application/x-www-form-urlencoded',
              'Content-Length': form.length,
            }),
          },
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
      req.end(post ? form : undefined)
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
