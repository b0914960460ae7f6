/**
 * The rules language is nftables' own: every rule body the docs show and every match the parser
 * tests accept is also accepted by the real `nft -c` (check only, nothing is installed), in an inet
 * table. Needs root for nft's netlink socket.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { parseRules } from '../../../src/services/firewall/rules.ts'
import { requireRoot } from '../../support/netns.ts'
import { VALID_MATCHES } from './samples.ts'

/** Rule bodies (direction removed) of a rules text; policy lines are vrio's own and skipped. */
function bodies(text: string): string[] {
  return parseRules(text).rules.map((r) => r.text.replace(/^(from|to)-guest\s+/, ''))
}

function nftCheck(rules: string[]): void {
  const dir = mkdtempSync(join(tmpdir(), 'vrio-fw-nft-'))
  try {
    const file = join(dir, 'check.nft')
    writeFileSync(
      file,
      `table inet vrio_fw_check {\n chain c {\n${rules.map((r) => `  ${r}\n`).join('')} }\n}\n`,
    )
    execFileSync('nft', ['-c', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    assert.fail(`nft refused the rules: ${(e as { stderr?: Buffer }).stderr?.toString() ?? e}`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

describe('firewall rules are nftables rules', () => {
  it('nft -c accepts every rule of the docs examples', () => {
    requireRoot()
    const doc = readFileSync(new URL('../../../../docs/services.md', import.meta.url), 'utf8')
    const section = doc.slice(doc.indexOf('## Firewall'))
    const rules = [...section.matchAll(/```nft\n([\s\S]*?)```/g)].flatMap((m) => bodies(m[1]))
    assert.ok(rules.length > 10)
    nftCheck(rules)
  })

  it('nft -c accepts the matches and verdicts the parser tests use', () => {
    requireRoot()
    const extra = [
      'ip protocol icmp accept',
      'ip6 nexthdr icmpv6 icmpv6 type { nd-neighbor-solicit, echo-request } accept',
      'tcp flags syn / syn,ack tcp dport 25 reject',
      'tcp flags != syn / syn,ack,rst drop',
      'tcp flags == syn accept',
      'udp dport 53 counter accept',
      'ip daddr 10.0.0.0/8 tcp dport { 22, 8000-8080 } ct state new accept',
      'ether type 0x88b5 drop',
      'ip version 4 accept',
      'meta nfproto ipv6 meta l4proto != tcp drop',
      'udp dport < 1024 reject with icmp type host-unreachable',
      'sctp dport 9 reject with icmpv6 type admin-prohibited',
      'tcp dport 80 reject with tcp reset',
      'reject with icmpx type port-unreachable',
      'icmp type destination-unreachable icmp code 3 accept',
      'ct state untracked accept',
    ]
    const rules = [...VALID_MATCHES.map((m) => `${m} accept`), ...extra]
    parseRules(rules.map((r) => `from-guest ${r}`).join('\n'))
    nftCheck(rules)
  })
})
