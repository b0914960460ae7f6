/**
 * `vrio demo`: the whole system on one machine. Network namespaces stand in for hosts: one IOhyp
 * and two guests on a LAN (a bridge of veths), each guest with a remote disk (formatted, mounted,
 * written and verified through its attached block device) and a remote NIC (the two guests ping
 * and iperf3 each other through the IOhyp's bridge). Prints progress, then a report; removes
 * everything it created, also on failure and Ctrl-C.
 */
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateKey, readKeyFile, writeKeyFile } from '../auth/key-file.ts'
import { type DiskInfo, type ListGuestsResponse, type NicInfo, ROUTES, routePath } from '../control/api.ts'
import { ControlClient } from '../control/control-client.ts'
import { VrioError } from '../errors.ts'
import { Lab } from './lab.ts'

const MiB = 1024 * 1024

export interface DemoOptions {
  /** Where progress and the report go. */
  out: (line: string) => void
  /** The vrio CLI entry point to start the daemons with. */
  cli: string
  /** MiB written to each guest's disk. */
  writeMiB?: number
  /** Seconds of iperf3 and fio. */
  seconds?: number
}

interface Guest {
  n: number
  ns: string
  ifname: string
  address: string
  mac: string
  sock: string
  nicAddress: string
  disk?: DiskInfo
}

export interface DemoReport {
  disks: {
    guest: string
    device: string
    writeMBps: number
    readMBps: number
    verified: boolean
    randReadIops: number
  }[]
  network: { pingRttMs: number; iperfGbps: number }
}

/** Runs the demo; resolves with the report, rejects with the failing step named. */
export async function runDemo(o: DemoOptions): Promise<DemoReport> {
  const lab = new Lab()
  const seconds = o.seconds ?? 3
  const writeMiB = o.writeMiB ?? 64
  const steps = 9
  let step = 0
  const stepDo = async <T>(title: string, f: () => Promise<T>): Promise<T> => {
    step++
    const started = performance.now()
    o.out(`[${step}/${steps}] ${title} ...`)
    try {
      const r = await f()
      o.out(`[${step}/${steps}] ${title}: ok (${((performance.now() - started) / 1000).toFixed(1)} s)`)
      return r
    } catch (error) {
      if (lab.interrupted)
        throw new VrioError('interrupted', `interrupted during step ${step}/${steps} (${title})`)
      throw new VrioError(
        'demo-failed',
        `step ${step}/${steps} (${title}) failed: ${(error as Error).message}`,
      )
    }
  }
  const onSignal = () => {
    o.out('interrupted: cleaning up ...')
    lab.interrupt()
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  const iohypSock = join(lab.dir, 'iohyp.sock')
  const guests: Guest[] = [1, 2].map((n) => ({
    n,
    ns: '',
    ifname: `g${n}-lan`,
    address: `10.77.0.${n + 1}`,
    mac: `02:00:0a:4d:00:0${n + 1}`,
    sock: join(lab.dir, `guest${n}.sock`),
    nicAddress: `192.168.100.${n}`,
  }))
  let iohypNs = ''
  try {
    await stepDo('checking tools and privileges', async () => {
      if (process.getuid?.() !== 0)
        throw new Error('the demo needs root (network namespaces, TAP, loop devices)')
      for (const tool of ['ip', 'mkfs.ext4', 'losetup', 'iperf3', 'ping', 'fio']) {
        await lab.run('sh', ['-c', `command -v ${tool}`]).catch(() => {
          throw new Error(`${tool} is not installed (bash scripts/setup.sh installs everything)`)
        })
      }
    })

    await stepDo('creating namespaces: lan (bridge), iohyp, guest1, guest2', async () => {
      const lan = await lab.netns('lan')
      await lab.run('ip', ['-n', lan, 'link', 'add', 'br0', 'type', 'bridge'])
      await lab.run('ip', ['-n', lan, 'link', 'set', 'br0', 'up'])
      iohypNs = await lab.netns('iohyp')
      await lab.veth({ ns: iohypNs, name: 'iohyp-lan' }, { ns: lan, name: 'p-iohyp' })
      await lab.run('ip', ['-n', lan, 'link', 'set', 'p-iohyp', 'master', 'br0'])
      await lab.run('ip', ['-n', iohypNs, 'addr', 'add', '10.77.0.1/24', 'dev', 'iohyp-lan'])
      await lab.run('ip', ['-n', iohypNs, 'link', 'add', 'brw', 'type', 'bridge'])
      await lab.run('ip', ['-n', iohypNs, 'link', 'set', 'brw', 'up'])
      for (const g of guests) {
        g.ns = await lab.netns(`guest${g.n}`)
        await lab.veth({ ns: g.ns, name: g.ifname }, { ns: lan, name: `p-guest${g.n}` })
        await lab.run('ip', ['-n', lan, 'link', 'set', `p-guest${g.n}`, 'master', 'br0'])
        await lab.run('ip', ['-n', g.ns, 'link', 'set', g.ifname, 'address', g.mac])
        await lab.run('ip', ['-n', g.ns, 'addr', 'add', `${g.address}/24`, 'dev', g.ifname])
      }
    })

    await stepDo('starting the IOhyp and the two guest agents', async () => {
      const node = process.execPath
      lab.start('iohyp', iohypNs, node, [
        o.cli,
        'iohyp',
        '--interface',
        'iohyp-lan',
        '--state-dir',
        join(lab.dir, 'state'),
        '--control',
        iohypSock,
      ])
      for (const g of guests) {
        const key = join(lab.dir, `guest${g.n}.key`)
        writeKeyFile(key, generateKey())
        lab.start(`guest${g.n}`, g.ns, node, [
          o.cli,
          'guest',
          '--interface',
          g.ifname,
          '--key-file',
          key,
          '--run-dir',
          join(lab.dir, `run${g.n}`),
          '--control',
          g.sock,
          '--iohyp',
          '10.77.0.1',
          '--attach',
        ])
      }
      for (const [name, sock] of [['iohyp', iohypSock], ...guests.map((g) => [`guest${g.n}`, g.sock])]) {
        await waitFor(`${name} to answer on its control socket`, 15_000, lab, async () => {
          await new ControlClient({ path: sock, timeoutMs: 1000 }).get(ROUTES.status)
          return true
        }).catch((error) => {
          throw new Error(`${(error as Error).message}; its log: ${lab.logTail(name)}`)
        })
      }
    })

    await stepDo('enrolling the guests (keys, MACs, addresses) and waiting for their channels', async () => {
      const iohyp = new ControlClient({ path: iohypSock })
      for (const g of guests) {
        const key = readKeyFile(join(lab.dir, `guest${g.n}.key`)).toString('hex')
        await iohyp.post(ROUTES.guests, { mac: g.mac, address: g.address, key })
      }
      await waitFor('both guests to connect', 15_000, lab, async () => {
        const r = await iohyp.get<ListGuestsResponse>(ROUTES.guests)
        return r.guests.every((x) => x.state === 'connected')
      })
    })

    await stepDo('creating a remote disk (256 MiB) and a remote NIC for each guest', async () => {
      const iohyp = new ControlClient({ path: iohypSock, timeoutMs: 60_000 })
      for (const g of guests) {
        const backing = join(lab.dir, `guest${g.n}-disk.img`)
        await lab.run('truncate', ['-s', '256M', backing])
        g.disk = await iohyp.post<DiskInfo>(ROUTES.disks, { guest: g.mac, backing, name: `disk${g.n}` })
        if (!g.disk.device) throw new Error(`guest${g.n} has no block device for its disk`)
        await iohyp.post<NicInfo>(ROUTES.nics, {
          guest: g.mac,
          mac: `02:00:c0:a8:64:0${g.n}`,
          tap: `vt-g${g.n}`,
          bridge: 'brw',
          name: `vnic${g.n}`,
        })
        await lab.run('ip', ['-n', g.ns, 'addr', 'add', `${g.nicAddress}/24`, 'dev', `vnic${g.n}`])
      }
    })

    const disks = await stepDo(
      `formatting, mounting, writing ${writeMiB} MiB and verifying each disk`,
      async () => {
        const out: DemoReport['disks'] = []
        const data = randomBytes(writeMiB * MiB)
        const want = createHash('sha256').update(data).digest('hex')
        const source = join(lab.dir, 'payload')
        writeFileSync(source, data)
        for (const g of guests) {
          const device = g.disk!.device!
          await lab.run('mkfs.ext4', ['-q', '-F', device])
          const mnt = join(lab.dir, `mnt${g.n}`)
          await lab.mount(device, mnt)
          let t = performance.now()
          await lab.run('dd', [
            `if=${source}`,
            `of=${join(mnt, 'payload')}`,
            'bs=1M',
            'conv=fsync',
            'status=none',
          ])
          const writeMBps = (writeMiB * MiB) / 1e6 / ((performance.now() - t) / 1000)
          await lab.unmount(mnt) // the read below must come from the disk, not the page cache
          await lab.mount(device, mnt)
          t = performance.now()
          const got = createHash('sha256')
            .update(readFileSync(join(mnt, 'payload')))
            .digest('hex')
          const readMBps = (writeMiB * MiB) / 1e6 / ((performance.now() - t) / 1000)
          await lab.unmount(mnt)
          await lab.run('e2fsck', ['-fn', device])
          if (got !== want) throw new Error(`guest${g.n}: the file read back differs from what was written`)
          const fioText = await lab.run('fio', [
            '--name=demo',
            '--ioengine=nbd',
            `--uri=${g.disk!.nbd}`,
            '--rw=randread',
            '--bs=4k',
            '--iodepth=32',
            `--runtime=${seconds}`,
            '--time_based',
            '--size=256m',
            '--output-format=json',
          ])
          let fio: { jobs: { read: { iops: number } }[] }
          try {
            fio = JSON.parse(fioText.slice(fioText.indexOf('{')))
          } catch {
            throw new Error(`fio on ${g.disk!.nbd}: ${fioText.trim().split('\n').slice(0, 3).join(' / ')}`)
          }
          out.push({
            guest: `guest${g.n}`,
            device,
            writeMBps,
            readMBps,
            verified: true,
            randReadIops: fio.jobs[0].read.iops,
          })
        }
        return out
      },
    )

    const network = await stepDo(
      'ping and iperf3 from guest1 to guest2 through the remote NICs',
      async () => {
        const ping = await lab.run('ping', ['-c', '10', '-i', '0.2', '-W', '3', guests[1].nicAddress], {
          ns: guests[0].ns,
        })
        const rtt = Number(/= [\d.]+\/([\d.]+)\//.exec(ping)?.[1] ?? Number.NaN)
        lab.start('iperf3-server', guests[1].ns, 'iperf3', ['-s', '-1', '-B', guests[1].nicAddress])
        await sleep(500)
        const iperf = JSON.parse(
          await lab.run(
            'iperf3',
            ['-c', guests[1].nicAddress, '-t', String(seconds), '-J', '--connect-timeout', '5000'],
            {
              ns: guests[0].ns,
            },
          ),
        )
        return { pingRttMs: rtt, iperfGbps: iperf.end.sum_received.bits_per_second / 1e9 }
      },
    )

    await stepDo('removing the disks and NICs', async () => {
      const iohyp = new ControlClient({ path: iohypSock, timeoutMs: 30_000 })
      for (const g of guests) {
        await iohyp.delete(routePath(ROUTES.disk, { name: `disk${g.n}` }))
        await iohyp.delete(routePath(ROUTES.nic, { name: `vnic${g.n}` }))
      }
    })

    const report: DemoReport = { disks, network }
    printReport(o.out, report, lab.prefix)
    return report
  } finally {
    o.out(`[${steps}/${steps}] tearing down ...`)
    const problems = await lab.cleanup()
    for (const p of problems) o.out(`cleanup: ${p}`)
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

async function waitFor(
  what: string,
  timeoutMs: number,
  lab: Lab,
  check: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (lab.interrupted) throw new VrioError('interrupted', 'interrupted')
    if (await check().catch(() => false)) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`)
    await sleep(100)
  }
}

function printReport(out: (line: string) => void, r: DemoReport, prefix: string): void {
  out('')
  out('What ran where (network namespaces):')
  out(`  ${prefix}-lan      bridge br0: the L2 segment between the IOhyp and the guests (10.77.0.0/24)`)
  out(
    `  ${prefix}-iohyp    vrio iohyp on iohyp-lan (10.77.0.1); disk images; bridge brw with the guests' NIC TAPs`,
  )
  out(
    `  ${prefix}-guest1   vrio guest on g1-lan (10.77.0.2); disk1 -> the agent's FUSE file -> loop device; NIC vnic1 192.168.100.1`,
  )
  out(
    `  ${prefix}-guest2   vrio guest on g2-lan (10.77.0.3); disk2 -> the agent's FUSE file -> loop device; NIC vnic2 192.168.100.2`,
  )
  out('')
  out('Remote disks (ext4 on the attached block device; file written with fsync, read back after remount):')
  for (const d of r.disks) {
    out(
      `  ${d.guest}: ${d.device}  write ${d.writeMBps.toFixed(0)} MB/s  read ${d.readMBps.toFixed(0)} MB/s  sha256 ${d.verified ? 'verified' : 'MISMATCH'}  4k randread QD32 ${Math.round(d.randReadIops)} IOPS`,
    )
  }
  out('Remote NICs (guest1 -> guest2 through the IOhyp bridge):')
  out(`  ping RTT ${r.network.pingRttMs.toFixed(3)} ms   iperf3 TCP ${r.network.iperfGbps.toFixed(2)} Gbit/s`)
  out('')
}
