/** The firewall I/O service for remote NICs: rules (docs/services.md), conntrack, reject answers. */
export type { ConntrackOptions, ConntrackTimeouts } from './conntrack.ts'
export {
  createFirewall,
  type DirectionCounters,
  Firewall,
  type FirewallCounters,
  type FirewallOptions,
  type RuleCounters,
} from './firewall.ts'
export { loadFirewall, readRules } from './load.ts'
export type { Rule, RuleSet } from './rules.ts'
