/** The daemons' kernel packet filter (src/io/packet-filter.ts), switched per start for comparisons. */

export type FilterSetting = 'on' | 'off'

/**
 * Runs `start`, which spawns vrio daemons, with their packet filter `filter`: VRIO_PACKET_FILTER in
 * this process's environment (which the daemons inherit) while it runs, restored after.
 */
export async function startWithFilter<T>(filter: FilterSetting, start: () => Promise<T>): Promise<T> {
  const saved = process.env.VRIO_PACKET_FILTER
  if (filter === 'off') process.env.VRIO_PACKET_FILTER = 'off'
  else delete process.env.VRIO_PACKET_FILTER
  try {
    return await start()
  } finally {
    if (saved === undefined) delete process.env.VRIO_PACKET_FILTER
    else process.env.VRIO_PACKET_FILTER = saved
  }
}
