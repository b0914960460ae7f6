/**
 * The HTTP-like text of bench/support/http-peer.ts (nic-services case 6), shared with
 * bench/dpi-app.ts, which feeds the same requests and responses straight to the DPI engine.
 */

export const WORDS = [
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

/** A text/html body of `size` bytes: words and markup (what a page looks like to the DPI). */
export function page(random: () => number, size: number): Buffer {
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

/** The server's pages (served in turn): 64 bodies of 1–16 KiB. */
export function pages(random: () => number): Buffer[] {
  return Array.from({ length: 64 }, (_, k) => page(random, 1024 * (1 + (k % 16))))
}

/** The form every 8th request POSTs. */
export const FORM = Buffer.from(
  Array.from({ length: 24 }, (_, k) => `${WORDS[k % WORDS.length]}=${WORDS[(k * 7) % WORDS.length]}`).join(
    '&',
  ),
)

/** The server's response headers (Node adds Date, Connection and Keep-Alive). */
export function responseHeaders(body: Buffer): Record<string, string | number> {
  return {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': body.length,
    'Cache-Control': 'no-cache',
    Server: 'bench/1.0',
  }
}

/** Request number `n` of the client: method, path and headers (Node adds Connection). */
export function clientRequest(
  random: () => number,
  n: number,
): { method: string; path: string; headers: Record<string, string | number>; body?: Buffer } {
  const post = n % 8 === 7
  const path = `/${WORDS[Math.floor(random() * WORDS.length)]}/${WORDS[Math.floor(random() * WORDS.length)]}.php?id=${Math.floor(random() * 1e6)}`
  return {
    method: post ? 'POST' : 'GET',
    path,
    headers: {
      Host: `www.${WORDS[n % WORDS.length]}.example`,
      'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
      Accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
      'Accept-Language': 'en-US,en;q=0.5',
      Cookie: `session=${Math.floor(random() * 1e12).toString(36)}; theme=light`,
      ...(post && { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': FORM.length }),
    },
    ...(post && { body: FORM }),
  }
}

/** Headers as Node writes them, with the ones it adds. */
function headerText(headers: Record<string, string | number>, extra: string[]): string {
  return `${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}${extra.map((l) => `${l}\r\n`).join('')}\r\n`
}

/** Request `n` as the bytes Node's client sends (keep-alive). */
export function requestBytes(random: () => number, n: number): Buffer {
  const r = clientRequest(random, n)
  const head = `${r.method} ${r.path} HTTP/1.1\r\n${headerText(r.headers, ['Connection: keep-alive'])}`
  return Buffer.concat([Buffer.from(head, 'latin1'), r.body ?? Buffer.alloc(0)])
}

/** A response with `body` as the bytes Node's server sends (keep-alive). */
export function responseBytes(body: Buffer): Buffer {
  const head = `HTTP/1.1 200 OK\r\n${headerText(responseHeaders(body), [
    'Date: Wed, 02 Dec 2026 19:00:00 GMT',
    'Connection: keep-alive',
    'Keep-Alive: timeout=60',
  ])}`
  return Buffer.concat([Buffer.from(head, 'latin1'), body])
}
