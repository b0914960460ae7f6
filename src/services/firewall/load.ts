/** Reading rules files (the only I/O of the firewall service). */
import { readFileSync } from 'node:fs'
import { VrioError } from '../../errors.ts'
import { createFirewall, type Firewall, type FirewallOptions } from './firewall.ts'
import { parseRules, type RuleSet } from './rules.ts'

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (e) {
    const reason = `${path}: cannot read the rules file: ${(e as Error).message}`
    throw new VrioError('invalid-rules', reason, { file: path, errors: [reason] }, { cause: e })
  }
}

/** Parses the rules file at `path` (for `firewall.replace`); throws VrioError 'invalid-rules'. */
export function readRules(path: string): RuleSet {
  return parseRules(readText(path), path)
}

/** A firewall from the rules file at `path`; throws VrioError 'invalid-rules'. */
export function loadFirewall(path: string, options: FirewallOptions = {}): Firewall {
  return createFirewall(readText(path), path, options)
}
