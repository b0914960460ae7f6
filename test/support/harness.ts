/**
 * One interface for "two vrio endpoints joined by a link", so the transport conformance suite runs
 * the same cases over the in-memory link (virtual time) and over real veth pairs between network
 * namespaces (real time, the native packet socket, optionally netem and a firewall in between).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { PACKET_SOCKET_BUFFER } from '../../src/daemon/runtime.ts'
import { LinkDriver } from '../../src/io/link-driver.ts'
import { PacketSocket } from '../../src/io/packet-socket.ts'
import type { ConnectionOptions } from '../../src/transport/config.ts'
import type { Address, Connection, ConnectionHandlers } from '../../src/transport/connection.ts'
import { parseMac } from '../../src/wire/address.ts'
import type { FaultModel } from './memory-link.ts'
import type { Netns } from './netns.ts'
import { Simulation, TEST_KEY } from './simulation.ts'

export type Accept = (remote: Address, c: Connection) => ConnectionHandlers | undefined

export interface LinkHarness {
  /** Segments are sealed (protocol version 2), i.e. the options did not ask for insecurePlaintext. */
  readonly sealed: boolean
  connect(handlers: ConnectionHandlers): Connection
  setAccept(accept: Accept): void
  /** Resolves once `cond()` holds; rejects after `timeoutMs` of link time. */
  until(cond: () => boolean, what: string, timeoutMs?: number): Promise<void>
  /** B loses all state at once, as a killed process does: no FIN, no RST. */
  restartB(): void
  close(): Promise<void>
  /** Endpoint and link counters, for failure messages. */
  diagnostics(): unknown
}

export type HarnessFactory = (options: Partial<ConnectionOptions>) => Promise<LinkHarness>

/** The same harness with every connection sealed (the default) or, with `insecurePlaintext`, not. */
export function inMode(factory: HarnessFactory, insecurePlaintext: boolean): HarnessFactory {
  return (options) => factory({ insecurePlaintext, ...options })
}

/** Both channel modes, for tests that must hold in each. */
export const CHANNEL_MODES = [
  { name: 'sealed', insecurePlaintext: false },
  { name: 'plaintext', insecurePlaintext: true },
] as const

export function memoryHarness(seed: number, faults?: FaultModel): HarnessFactory {
  return async (options) => {
    const sim = new Simulation(seed, faults, options)
    let accept: Accept = () => undefined
    sim.acceptHandlers = (r, c) => accept(r, c)
    let restarts = 0
    return {
      sealed: !options.insecurePlaintext,
      connect: (h) => sim.connect(h),
      setAccept: (a) => (accept = a),
      until: async (cond, what, timeoutMs = 60_000) => {
        if (!sim.run(cond, sim.clock.now + timeoutMs)) throw new Error(`timed out waiting for ${what}`)
      },
      restartB: () => sim.restartB(1000 + restarts++, options),
      close: async () => {},
      diagnostics: () => ({ a: sim.a.stats, b: sim.b.stats, link: sim.link.stats }),
    }
  }
}

export interface VethEnd {
  ns: Netns
  ifname: string
  ip: number
}

export const VRIO_TEST_PORT = 7860

/**
 * Endpoints over real interfaces, driven from this process: each side's packet socket is opened
 * inside its namespace. The vrio addresses are not configured on the interfaces, so the kernels
 * ignore the frames and no kernel guard is needed.
 */
export function vethHarness(a: VethEnd, b: VethEnd, link: { vnetHdr?: boolean } = {}): HarnessFactory {
  const vnetHdr = link.vnetHdr ?? false
  return async (options) => {
    const open = (end: VethEnd) =>
      PacketSocket.open({
        ifname: end.ifname,
        netns: end.ns.path,
        ignoreOutgoing: true,
        vnetHdr,
        rcvBuf: PACKET_SOCKET_BUFFER,
        sndBuf: PACKET_SOCKET_BUFFER,
      })
    const sa = open(a)
    let sb = open(b)
    const macA = parseMac(sa.mac)!
    const macB = parseMac(sb.mac)!
    let accept: Accept = () => undefined
    const driverA = new LinkDriver({
      channel: sa,
      mac: macA,
      ip: a.ip,
      options,
      vnetHdr,
      peerPort: VRIO_TEST_PORT,
      key: TEST_KEY,
    })
    const newB = () =>
      new LinkDriver({
        channel: sb,
        mac: macB,
        ip: b.ip,
        options,
        vnetHdr,
        listenPort: VRIO_TEST_PORT,
        key: TEST_KEY,
        accept: (r, c) => accept(r, c),
      })
    let driverB = newB()
    return {
      sealed: !options.insecurePlaintext,
      connect: (h) => driverA.connect({ mac: macB, ip: b.ip, port: VRIO_TEST_PORT }, h),
      setAccept: (fn) => (accept = fn),
      until: async (cond, what, timeoutMs = 30_000) => {
        const deadline = Date.now() + timeoutMs
        while (!cond()) {
          if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
          await sleep(2)
        }
      },
      restartB: () => {
        // Drop B's socket and state without a word on the wire, then come back with a fresh endpoint.
        driverB.stop({ silent: true })
        sb.close()
        sb = open(b)
        driverB = newB()
      },
      diagnostics: () => ({
        a: { endpoint: driverA.endpoint.stats, socket: sa.stats(), refused: driverA.sendRefused },
        b: { endpoint: driverB.endpoint.stats, socket: sb.stats(), refused: driverB.sendRefused },
      }),
      close: async () => {
        // Silently: a test's end is not a protocol event, and RSTs would show up in captures.
        driverA.stop({ silent: true })
        driverB.stop({ silent: true })
        await sleep(20)
        sa.close()
        sb.close()
      },
    }
  }
}
