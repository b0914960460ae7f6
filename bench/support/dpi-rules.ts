/** DPI rule sets for the benches (bench/dpi.ts, bench/dpi-app.ts, bench/nic-services.ts). */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { brotliDecompressSync } from 'node:zlib'
import { seededRandom } from '../../test/support/random.ts'

/** ET Open 2024-04-21's rule files (the test fixture), {name: text}; unloadable rules are skipped by the parser. */
export function etOpenFiles(): Record<string, string> {
  const path = join(import.meta.dirname, '../../../test/fixtures/dpi/et-open/et-open-2024-04-21.json.br')
  return JSON.parse(brotliDecompressSync(readFileSync(path)).toString('latin1'))
}

/** ET Open as one text (every file). */
export function etOpenText(): string {
  return Object.values(etOpenFiles()).join('\n')
}

const ALNUM = 'abcdefghijklmnopqrstuvwxyz0123456789'

/** The seed both benches use, so their rule sets are the same. */
export const DPI_RULES_SEED = 0x5eed

/**
 * `count` Suricata rules generated from `seed` (the same seed gives the same text): mostly one rare
 * content (60 %); HTTP-style rules with a common "GET " anchor and a nocase content (20 %); a fast
 * pattern with a second content and a pcre (10 %); drop rules with hex bytes from port 80 (10 %).
 * Uses $HOME_NET and $HTTP_PORTS.
 */
export function dpiContentRules(count: number, seed = DPI_RULES_SEED): string {
  const random = seededRandom(seed)
  const pick = <T>(a: readonly T[]): T => a[Math.floor(random() * a.length)]
  const token = (n: number) => Array.from({ length: n }, () => pick([...ALNUM])).join('')
  const lines: string[] = []
  for (let i = 0; i < count; i++) {
    const sid = 1_000_000 + i
    const fast = `${pick(['/', '', 'x-', '.'])}${token(6 + Math.floor(random() * 10))}`
    const kind = i % 10
    if (kind < 6) {
      lines.push(`alert tcp any any -> any any (msg:"r${i}"; content:"${fast}"; sid:${sid};)`)
    } else if (kind < 8) {
      lines.push(
        `alert http $HOME_NET any -> any $HTTP_PORTS (msg:"r${i}"; flow:established,to_server; ` +
          `content:"GET "; depth:4; content:"${fast}"; nocase; distance:0; sid:${sid};)`,
      )
    } else if (kind < 9) {
      lines.push(
        `alert tcp any any -> any any (msg:"r${i}"; content:"${fast}"; fast_pattern; content:"HTTP/1.1"; ` +
          `pcre:"/${fast}=\\d+/i"; sid:${sid};)`,
      )
    } else {
      lines.push(`drop tcp any 80 -> any any (msg:"r${i}"; content:"${fast}|0d 0a|"; sid:${sid};)`)
    }
  }
  return lines.join('\n')
}
