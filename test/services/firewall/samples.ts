/** Rule fragments shared by the fuzz and nft interop tests. */

/** Sensible single-match fragments: rules built from them must parse, and nft must accept them too. */
export const VALID_MATCHES = [
  'tcp dport 22',
  'udp sport { 53, 5353 }',
  'sctp dport 1-1024',
  'ip saddr 10.0.0.0/8',
  'ip daddr != 192.0.2.1',
  'ip6 saddr 2001:db8::/32',
  'ether type arp',
  'ether saddr 02:00:00:00:00:01',
  'vlan id 7',
  'ct state established,related',
  'ct state != invalid',
  'tcp flags syn / syn,ack',
  'icmp type echo-request',
  'icmpv6 type nd-neighbor-solicit',
  'meta l4proto udp',
  'ip protocol { tcp, udp }',
  'counter',
  'tcp dport >= 1024',
]
