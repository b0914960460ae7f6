/** Deep packet inspection (IDS/IPS) for remote NICs: Suricata-style rules, EVE JSON alerts. */
export { AhoCorasick } from './aho-corasick.ts'
export { type Classification, DEFAULT_CLASSIFICATIONS, DEFAULT_VARS } from './classification.ts'
export { createDpi, type DpiCounters, type DpiOptions, DpiService } from './engine.ts'
export { type EveAlertRecord, eveTimestamp } from './eve.ts'
export { EveFileSink, loadDpi, reloadDpi } from './load.ts'
export {
  type ContentMatch,
  type ParsedRules,
  type PcreMatch,
  parseRules,
  parseRulesStrict,
  RuleParser,
  type Rule,
  type RuleError,
  type RuleParseOptions,
} from './rules.ts'
