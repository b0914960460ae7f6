/** Firewall rule sets for the benches (bench/firewall.ts, bench/nic-services.ts). */

/**
 * 100 `from-guest` rules that TCP traffic to port 443 or 5201 from 192.168.0.0/16 or 10.0.0.0/8
 * falls through: ports, prefixes, sets and ranges, TCP flags, IPv6 (one rule per line).
 */
export function hundredFirewallRules(): string {
  const lines: string[] = []
  for (let i = 0; i < 50; i++) lines.push(`from-guest ip daddr 10.${i}.0.0/16 tcp dport ${1000 + i} accept`)
  for (let i = 0; i < 20; i++) lines.push(`from-guest ip saddr 172.16.${i}.0/24 drop`)
  for (let i = 0; i < 15; i++)
    lines.push(`from-guest tcp dport { ${2000 + i}, ${3000 + i}, 5000-5100 } ct state new accept`)
  for (let i = 0; i < 10; i++) lines.push(`from-guest ip6 saddr 2001:db8:${i}::/48 udp dport 53 accept`)
  for (let i = 0; i < 5; i++) lines.push(`from-guest tcp flags syn / syn,ack tcp dport ${25 + i} reject`)
  return lines.join('\n')
}
