/** The firewall I/O service for remote NICs: rules (docs/services.md), conntrack, reject answers. */
export { DEFAULT_TIMEOUTS, type ConntrackOptions, type ConntrackTimeouts } from './conntrack.ts'
export {
  createFirewall,
  type DirectionCounters,
  Firewall,
  type FirewallCounters,
  type FirewallOptions,
  type RuleCounters,
} from './firewall.ts'
export { loadFirewall, readRules } from './load.ts'
export { parseRules, type Rule, type RuleSet } from './rules.ts'
