/**
 * The IOhyp's control API routes (docs/operations.md): guests, and for each device kind the same
 * three — list, create, remove — served by its registry.
 */
import { ROUTES } from '../control/api.ts'
import { type ControlServer, RawBody } from '../control/control-server.ts'
import { METRICS_CONTENT_TYPE } from '../daemon/metrics.ts'
import type { DeviceSpec } from '../devices/kind.ts'
import type { IohypDaemon } from './daemon.ts'
import type { DeviceRegistry } from './registry.ts'

export function iohypRoutes(control: ControlServer, d: IohypDaemon): void {
  control.route('GET', ROUTES.status, () => d.status())
  control.route('GET', ROUTES.metrics, async () => new RawBody(METRICS_CONTENT_TYPE, await d.scrape()))
  control.route('GET', ROUTES.guests, () => ({ guests: d.guests() }))
  control.route('POST', ROUTES.guests, async (req) => ({ guest: await d.addGuest(req.body) }))
  control.route('DELETE', ROUTES.guest, async (req) => ({ guest: await d.removeGuest(req.params.mac ?? '') }))
  control.route('GET', ROUTES.config, () => d.exportable())
  const devices = [
    { registry: d.disks, list: ROUTES.disks, one: ROUTES.disk, key: 'disks' },
    {
      registry: d.nics as DeviceRegistry<DeviceSpec, unknown, unknown>,
      list: ROUTES.nics,
      one: ROUTES.nic,
      key: 'nics',
    },
  ]
  for (const { registry, list, one, key } of devices) {
    control.route('GET', list, () => ({ [key]: registry.list() }))
    control.route('POST', list, async (req) => {
      const info = await registry.create(req.body, (text) => d.findGuest(text))
      await d.saveState()
      return info
    })
    control.route('DELETE', one, async (req) => {
      const info = await registry.remove(req.params.name ?? '', (mac) => d.guestOf(mac))
      await d.saveState()
      return info
    })
  }
  control.route('POST', ROUTES.nicServices, async (req) => {
    const nic = await d.nics.setServices(req.params.name ?? '', req.body)
    await d.saveState()
    return nic
  })
  control.route('GET', ROUTES.nicAlerts, (req) => ({ alerts: d.nics.alerts(req.params.name ?? '') }))
}
