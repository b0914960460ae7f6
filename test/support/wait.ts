import { setTimeout as sleep } from 'node:timers/promises'

/** Polls `cond` every few ms until it holds; rejects with `what` after `timeoutMs`. */
export async function waitUntil(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(2)
  }
}

/**
 * `promise`, or a failure naming `what` when it has not settled after `ms` — a generous deadline
 * that turns a hang into a clear failure, never a measurement (timings belong in bench/).
 */
export async function settlesWithin<T>(promise: Promise<T>, what: string, ms = 120_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms / 1000} s (a hang)`)), ms)
  })
  try {
    return await Promise.race([promise, deadline])
  } finally {
    clearTimeout(timer)
  }
}
