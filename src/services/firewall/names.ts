/**
 * The symbolic names a rules file may use where nftables accepts them (nft's own spellings), mapped
 * to their numbers. Numbers are always accepted too.
 */

export const ETHER_TYPES: Readonly<Record<string, number>> = { ip: 0x0800, arp: 0x0806, ip6: 0x86dd }

/** IP protocol / IPv6 next header names (nft uses /etc/protocols). */
export const IP_PROTOCOLS: Readonly<Record<string, number>> = {
  icmp: 1,
  igmp: 2,
  ipip: 4,
  tcp: 6,
  udp: 17,
  ipv6: 41,
  gre: 47,
  esp: 50,
  ah: 51,
  icmpv6: 58,
  'ipv6-icmp': 58,
  sctp: 132,
  udplite: 136,
}

/** A few well-known service names (nft reads /etc/services; these are the common ones). */
export const SERVICES: Readonly<Record<string, number>> = {
  'ftp-data': 20,
  ftp: 21,
  ssh: 22,
  telnet: 23,
  smtp: 25,
  domain: 53,
  bootps: 67,
  bootpc: 68,
  tftp: 69,
  http: 80,
  pop3: 110,
  ntp: 123,
  imap: 143,
  snmp: 161,
  ldap: 389,
  https: 443,
  submission: 587,
  imaps: 993,
  pop3s: 995,
  nbd: 10809,
}

export const ICMP_TYPES: Readonly<Record<string, number>> = {
  'echo-reply': 0,
  'destination-unreachable': 3,
  'source-quench': 4,
  redirect: 5,
  'echo-request': 8,
  'router-advertisement': 9,
  'router-solicitation': 10,
  'time-exceeded': 11,
  'parameter-problem': 12,
  'timestamp-request': 13,
  'timestamp-reply': 14,
  'info-request': 15,
  'info-reply': 16,
  'address-mask-request': 17,
  'address-mask-reply': 18,
}

export const ICMPV6_TYPES: Readonly<Record<string, number>> = {
  'destination-unreachable': 1,
  'packet-too-big': 2,
  'time-exceeded': 3,
  'parameter-problem': 4,
  'echo-request': 128,
  'echo-reply': 129,
  'mld-listener-query': 130,
  'mld-listener-report': 131,
  'mld-listener-done': 132,
  'mld-listener-reduction': 132,
  'nd-router-solicit': 133,
  'nd-router-advert': 134,
  'nd-neighbor-solicit': 135,
  'nd-neighbor-advert': 136,
  'nd-redirect': 137,
  'router-renumbering': 138,
  'ind-neighbor-solicit': 141,
  'ind-neighbor-advert': 142,
  'mld2-listener-report': 143,
}

/** `reject with icmp type X` codes (ICMP destination unreachable, RFC 792 / RFC 1812). */
export const ICMP_REJECT_CODES: Readonly<Record<string, number>> = {
  'net-unreachable': 0,
  'host-unreachable': 1,
  'prot-unreachable': 2,
  'port-unreachable': 3,
  'net-prohibited': 9,
  'host-prohibited': 10,
  'admin-prohibited': 13,
}

/** `reject with icmpv6 type X` codes (ICMPv6 destination unreachable, RFC 4443). */
export const ICMPV6_REJECT_CODES: Readonly<Record<string, number>> = {
  'no-route': 0,
  'admin-prohibited': 1,
  'addr-unreachable': 3,
  'port-unreachable': 4,
  'policy-fail': 5,
  'reject-route': 6,
}

/** `reject with icmpx type X`: one name, the matching code for each IP version. */
export const ICMPX_REJECT_CODES: Readonly<Record<string, readonly [v4: number, v6: number]>> = {
  'port-unreachable': [3, 4],
  'admin-prohibited': [13, 1],
  'no-route': [0, 0],
  'host-unreachable': [1, 3],
}

export const TCP_FLAG_NAMES: Readonly<Record<string, number>> = {
  fin: 0x01,
  syn: 0x02,
  rst: 0x04,
  psh: 0x08,
  ack: 0x10,
  urg: 0x20,
  ecn: 0x40,
  cwr: 0x80,
}

/** ct state bits: a packet has exactly one; a match holds a mask. */
export const CT_NEW = 1
export const CT_ESTABLISHED = 2
export const CT_RELATED = 4
export const CT_INVALID = 8
export const CT_UNTRACKED = 16

export const CT_STATES: Readonly<Record<string, number>> = {
  new: CT_NEW,
  established: CT_ESTABLISHED,
  related: CT_RELATED,
  invalid: CT_INVALID,
  untracked: CT_UNTRACKED,
}

/** A name of `table`, or undefined (own properties only: "constructor" is no protocol). */
export function lookupName<T>(table: Readonly<Record<string, T>>, name: string): T | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined
}
