import { readFileSync } from 'node:fs'

/** The package version, read once from package.json (dist/src/cli/ is three levels below the root). */
export const VERSION: string = JSON.parse(
  readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'),
).version
