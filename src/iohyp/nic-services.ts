/**
 * A NIC's services (firewall, DPI) on the IOhyp: loaded when the NIC opens, and added, replaced
 * (keeping flow state) or removed at run time, all of a request or none of it.
 */
import * as z from 'zod'
import { absolutePathSchema, checkWithSchema, specError } from '../devices/fields.ts'
import {
  NET_SERVICE_KINDS,
  NetServiceChain,
  type NetServiceKind,
  type ReplaceableNetService,
} from '../services/net/chain.ts'
import type { CompiledRules } from '../services/net/compile.ts'
import { buildNetService, compileInWorker, type DpiPlacement, prepareReplace } from '../services/net/load.ts'

/** Alerts kept per NIC for `vrio nic alerts` (all of them also go to the EVE file). */
const ALERTS_KEPT = 1000

export interface NicServices {
  chain: NetServiceChain
  /** The latest alerts (EVE records), oldest first. */
  alerts: Record<string, unknown>[]
}

/** The NIC's chain with the services its spec names (rules compiled in worker threads). */
export async function loadNicServices(
  name: string,
  files: Partial<Record<NetServiceKind, string>>,
  onAlert: (record: Record<string, unknown>) => void,
  placement?: DpiPlacement,
): Promise<NicServices> {
  const alerts: Record<string, unknown>[] = []
  const chain = new NetServiceChain((record) => {
    alerts.push(record)
    if (alerts.length > ALERTS_KEPT) alerts.shift()
    onAlert(record)
  })
  await changeNicServices(name, chain, files, placement)
  return { chain, alerts }
}

const rulesFile = absolutePathSchema.nullable().optional()
/** A `POST /v1/nic/:name/services` body: a rules file (absolute path) or null per service. */
const servicesRequestSchema = z.strictObject({
  firewall: rulesFile,
  dpi: rulesFile,
  strict: z.boolean().optional(),
})

/**
 * Applies a services request to `chain`. `strict: true` refuses a DPI rules file with any unusable
 * rule (by default those are skipped and reported, as Suricata does). Returns what was loaded.
 */
export async function changeNicServices(
  name: string,
  chain: NetServiceChain,
  body: unknown,
  placement?: DpiPlacement,
): Promise<Record<string, { rules: number; skipped: number }>> {
  const r = checkWithSchema(servicesRequestSchema, body ?? {})
  if (!r.ok) throw specError(r.issues)
  const req = r.data
  // Read, check and compile every file in worker threads (a missing, bad or too large one
  // changes nothing), then build the new services and prepare the swaps in the running ones
  // (off the data path, or a slice at a time), and only then apply everything at once.
  const strict = req.strict === true
  const compiled = new Map<NetServiceKind, { path: string; rules: CompiledRules }>()
  await Promise.all(
    NET_SERVICE_KINDS.map(async (kind) => {
      const path = req[kind]
      if (typeof path !== 'string') return
      compiled.set(kind, { path, rules: await compileInWorker({ kind, files: [path], strict }) })
    }),
  )
  const swaps: (() => void)[] = []
  // Services built for this request: closed (their threads ended) if it fails before the swaps.
  const built: ReplaceableNetService[] = []
  try {
    await prepareSwaps()
  } catch (error) {
    for (const service of built) service.close?.()
    throw error
  }
  for (const kind of NET_SERVICE_KINDS) if (req[kind] === null) swaps.push(() => chain.set(kind, undefined))
  for (const swap of swaps) swap()
  // In force when this returns, on the services' threads too, and their counters say so.
  await chain.settled()
  return Object.fromEntries(
    [...compiled].map(([kind, c]) => [
      kind,
      { rules: c.rules.report.loaded, skipped: c.rules.report.skipped.length },
    ]),
  )

  async function prepareSwaps(): Promise<void> {
    for (const kind of NET_SERVICE_KINDS) {
      const c = compiled.get(kind)
      if (!c) continue
      const current = chain.get(kind)
      const slot = { file: c.path, report: c.rules.report }
      if (current) {
        const swap = await prepareReplace(kind, current.service, c.rules, name)
        swaps.push(() => chain.set(kind, { ...slot, service: swap() }))
      } else {
        const service = await buildNetService(kind, c.rules, name, placement)
        built.push(service)
        swaps.push(() => chain.set(kind, { ...slot, service }))
      }
    }
  }
}
