/**
 * The IOhyp's control API routes (docs/operations.md): guests, and for each device kind the same
 * three — list, create, remove.
 */
import { ROUTES } from '../control/api.ts'
import { type ControlServer, RawBody } from '../control/control-server.ts'
import { METRICS_CONTENT_TYPE } from '../daemon/metrics.ts'
import type { IohypApi } from './api.ts'

export function iohypRoutes(control: ControlServer, d: IohypApi): void {
  control.route('GET', ROUTES.status, () => d.status())
  control.route('GET', ROUTES.metrics, async () => new RawBody(METRICS_CONTENT_TYPE, await d.scrape()))
  control.route('GET', ROUTES.guests, async () => ({ guests: await d.guests() }))
  control.route('POST', ROUTES.guests, async (req) => ({ guest: await d.addGuest(req.body) }))
  control.route('DELETE', ROUTES.guest, async (req) => ({ guest: await d.removeGuest(req.params.mac ?? '') }))
  control.route('POST', ROUTES.guestMove, async (req) => ({
    guest: await d.moveGuest(req.params.mac ?? '', req.body),
  }))
  control.route('GET', ROUTES.config, () => d.exportable())
  for (const [key, list, one] of [
    ['disks', ROUTES.disks, ROUTES.disk],
    ['nics', ROUTES.nics, ROUTES.nic],
  ] as const) {
    control.route('GET', list, async () => ({ [key]: await d.listDevices(key) }))
    control.route('POST', list, (req) => d.createDevice(key, req.body))
    control.route('DELETE', one, (req) => d.removeDevice(key, req.params.name ?? ''))
  }
  control.route('POST', ROUTES.nicServices, (req) => d.setNicServices(req.params.name ?? '', req.body))
  control.route('GET', ROUTES.nicAlerts, async (req) => ({
    alerts: await d.nicAlerts(req.params.name ?? ''),
  }))
}
