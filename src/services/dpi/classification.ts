/**
 * Suricata's default classification.config (classtype → description, priority) and its default
 * rule variables (suricata.yaml's address-groups and port-groups).
 */

export interface Classification {
  /** The EVE `alert.category`. */
  description: string
  /** The default `alert.severity` of rules of this class (1 = highest). */
  priority: number
}

const table: Array<[string, string, number]> = [
  ['not-suspicious', 'Not Suspicious Traffic', 3],
  ['unknown', 'Unknown Traffic', 3],
  ['bad-unknown', 'Potentially Bad Traffic', 2],
  ['attempted-recon', 'Attempted Information Leak', 2],
  ['successful-recon-limited', 'Information Leak', 2],
  ['successful-recon-largescale', 'Large Scale Information Source Leak', 2],
  ['attempted-dos', 'Attempted Denial of Service', 2],
  ['successful-dos', 'Denial of Service', 2],
  ['attempted-user', 'Attempted User Privilege Gain', 1],
  ['unsuccessful-user', 'Unsuccessful User Privilege Gain', 1],
  ['successful-user', 'Successful User Privilege Gain', 1],
  ['attempted-admin', 'Attempted Administrator Privilege Gain', 1],
  ['successful-admin', 'Successful Administrator Privilege Gain', 1],
  ['rpc-portmap-decode', 'Decode of an RPC Query', 2],
  ['shellcode-detect', 'Executable code was detected', 1],
  ['string-detect', 'A suspicious string was detected', 3],
  ['suspicious-filename-detect', 'A suspicious filename was detected', 2],
  ['suspicious-login', 'An attempted login using a suspicious username was detected', 2],
  ['system-call-detect', 'A system call was detected', 2],
  ['tcp-connection', 'A TCP connection was detected', 4],
  ['trojan-activity', 'A Network Trojan was detected', 1],
  ['unusual-client-port-connection', 'A client was using an unusual port', 2],
  ['network-scan', 'Detection of a Network Scan', 3],
  ['denial-of-service', 'Detection of a Denial of Service Attack', 2],
  ['non-standard-protocol', 'Detection of a non-standard protocol or event', 2],
  ['protocol-command-decode', 'Generic Protocol Command Decode', 3],
  ['web-application-activity', 'access to a potentially vulnerable web application', 2],
  ['web-application-attack', 'Web Application Attack', 1],
  ['misc-activity', 'Misc activity', 3],
  ['misc-attack', 'Misc Attack', 2],
  ['icmp-event', 'Generic ICMP event', 3],
  ['inappropriate-content', 'Inappropriate Content was Detected', 1],
  ['policy-violation', 'Potential Corporate Privacy Violation', 1],
  ['default-login-attempt', 'Attempt to login by a default username and password', 2],
  ['targeted-activity', 'Targeted Malicious Activity was Detected', 1],
  ['exploit-kit', 'Exploit Kit Activity Detected', 1],
  ['external-ip-check', 'Device Retrieving External IP Address Detected', 2],
  ['domain-c2', 'Domain Observed Used for C2 Detected', 1],
  ['pup-activity', 'Possibly Unwanted Program Detected', 2],
  ['credential-theft', 'Successful Credential Theft Detected', 1],
  ['social-engineering', 'Possible Social Engineering Attempted', 2],
  ['coin-mining', 'Crypto Currency Mining Activity Detected', 2],
  ['command-and-control', 'Malware Command and Control Activity Detected', 1],
]

export const DEFAULT_CLASSIFICATIONS: Readonly<Record<string, Classification>> = Object.fromEntries(
  table.map(([name, description, priority]) => [name, { description, priority }]),
)

/** The severity of a rule with neither `priority` nor a classtype that has one. */
export const DEFAULT_PRIORITY = 3

const HOME_NET = '[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]'

/** suricata.yaml's defaults. `EXTERNAL_NET` is `!$HOME_NET` unless HOME_NET is `any` (then `any`). */
const DEFAULT_VARS: Readonly<Record<string, string>> = {
  HOME_NET,
  EXTERNAL_NET: '!$HOME_NET',
  HTTP_SERVERS: '$HOME_NET',
  SMTP_SERVERS: '$HOME_NET',
  SQL_SERVERS: '$HOME_NET',
  DNS_SERVERS: '$HOME_NET',
  TELNET_SERVERS: '$HOME_NET',
  AIM_SERVERS: '$EXTERNAL_NET',
  DC_SERVERS: '$HOME_NET',
  DNP3_SERVER: '$HOME_NET',
  DNP3_CLIENT: '$HOME_NET',
  MODBUS_CLIENT: '$HOME_NET',
  MODBUS_SERVER: '$HOME_NET',
  ENIP_CLIENT: '$HOME_NET',
  ENIP_SERVER: '$HOME_NET',
  HTTP_PORTS: '80',
  SHELLCODE_PORTS: '!80',
  ORACLE_PORTS: '1521',
  SSH_PORTS: '22',
  DNP3_PORTS: '20000',
  MODBUS_PORTS: '502',
  FILE_DATA_PORTS: '[$HTTP_PORTS,110,143]',
  FTP_PORTS: '21',
  GENEVE_PORTS: '6081',
  VXLAN_PORTS: '4789',
  TEREDO_PORTS: '3544',
}

/** The defaults overlaid with `vars` (names without the `$`). */
export function resolveVars(vars: Readonly<Record<string, string>> = {}): Record<string, string> {
  const out: Record<string, string> = { ...DEFAULT_VARS, ...vars }
  if (vars.EXTERNAL_NET === undefined && out.HOME_NET.trim().toLowerCase() === 'any') out.EXTERNAL_NET = 'any'
  return out
}
