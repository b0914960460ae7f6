/** A bounded ring: keeps the last `capacity` values pushed, oldest first. Pure. */
export class Ring<T> {
  readonly capacity: number
  private readonly items: T[] = []
  /** Index in `items` of the oldest value once the ring is full. */
  private head = 0

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`ring capacity ${capacity}`)
    this.capacity = capacity
  }

  get length(): number {
    return this.items.length
  }

  /** Appends `value`, dropping the oldest one when full. */
  push(value: T): void {
    if (this.items.length < this.capacity) this.items.push(value)
    else {
      this.items[this.head] = value
      this.head = (this.head + 1) % this.capacity
    }
  }

  /** The i-th oldest value (0 = oldest), undefined outside 0..length-1. */
  at(i: number): T | undefined {
    if (i < 0 || i >= this.items.length) return undefined
    return this.items[(this.head + i) % this.items.length]
  }

  last(): T | undefined {
    return this.at(this.items.length - 1)
  }

  /** The values from the i-th oldest on, oldest first. */
  slice(from = 0): T[] {
    const out: T[] = []
    for (let i = Math.max(0, from); i < this.items.length; i++) out.push(this.at(i) as T)
    return out
  }
}
