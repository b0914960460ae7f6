/**
 * The dashboard's memory: the last `capacity` points (600 = 10 min at one a second) of every
 * series, all aligned on one time axis, as a plot wants them. A series that was absent at a
 * point holds null there; a series null over the whole window is forgotten, so the memory stays
 * bounded however many devices come and go. Pure.
 */
import { Ring } from './ring.ts'

/** What a series is: the plot it belongs to and its legend. */
export interface SeriesMeta {
  readonly group: string
  readonly label: string
}

export interface HistoryPoints {
  /** Every series held, in a stable order, with its meta. */
  readonly series: readonly (SeriesMeta & { key: string })[]
  /** Times (ms since the epoch) of the points returned, oldest first. */
  readonly t: readonly number[]
  /** One column per entry of `series`, aligned with `t`. */
  readonly values: readonly (readonly (number | null)[])[]
}

const DEFAULT_HISTORY_POINTS = 600

function seriesKey(meta: SeriesMeta): string {
  return JSON.stringify([meta.group, meta.label])
}

export class History {
  readonly capacity: number
  private readonly times: Ring<number>
  private readonly columns = new Map<string, { meta: SeriesMeta; ring: Ring<number | null> }>()

  constructor(capacity = DEFAULT_HISTORY_POINTS) {
    this.capacity = capacity
    this.times = new Ring<number>(capacity)
  }

  get length(): number {
    return this.times.length
  }

  /** Adds a point at time `t` (ms, later than the last one) with the values of the series present then. */
  push(t: number, point: readonly (SeriesMeta & { value: number | null })[]): void {
    const last = this.times.last()
    if (last !== undefined && t <= last) throw new RangeError(`history time ${t} is not after ${last}`)
    const given = new Map<string, number | null>()
    for (const p of point) {
      const key = seriesKey(p)
      given.set(key, p.value !== null && Number.isFinite(p.value) ? p.value : null)
      if (!this.columns.has(key)) {
        const ring = new Ring<number | null>(this.capacity)
        for (let i = 0; i < this.times.length; i++) ring.push(null)
        this.columns.set(key, { meta: { group: p.group, label: p.label }, ring })
      }
    }
    this.times.push(t)
    for (const [key, column] of this.columns) {
      column.ring.push(given.get(key) ?? null)
      if (!given.has(key) && column.ring.slice().every((v) => v === null)) this.columns.delete(key)
    }
  }

  /** The points later than `after` (ms; all of them when undefined), every series held. */
  points(after?: number): HistoryPoints {
    let from = 0
    if (after !== undefined)
      while (from < this.times.length && (this.times.at(from) as number) <= after) from++
    const keys = [...this.columns.keys()].sort()
    return {
      series: keys.map((key) => ({ key, ...(this.columns.get(key) as { meta: SeriesMeta }).meta })),
      t: this.times.slice(from),
      values: keys.map((key) => (this.columns.get(key) as { ring: Ring<number | null> }).ring.slice(from)),
    }
  }
}
