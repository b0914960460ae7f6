/** Deep packet inspection (IDS/IPS) for remote NICs: Suricata-style rules, EVE JSON alerts. */
export type { Classification } from './classification.ts'
export { createDpi, type DpiCounters, type DpiOptions, DpiService } from './engine.ts'
export type { EveAlertRecord } from './eve.ts'
export { EveFileSink, loadDpi } from './load.ts'
export {
  type ContentMatch,
  type ParsedRules,
  type PcreMatch,
  parseRules,
  RuleParser,
  type Rule,
  type RuleError,
  type RuleParseOptions,
} from './rules.ts'
