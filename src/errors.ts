/**
 * One error class for the whole project, with a stable string `code` that scripts and the control
 * API can rely on; `details` carries the fields that belong to that code. Serialises to JSON as
 * `{code, message, ...details}` and back.
 */
export class VrioError extends Error {
  readonly code: string
  readonly details: Readonly<Record<string, unknown>>

  constructor(code: string, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options)
    this.name = 'VrioError'
    this.code = code
    this.details = details
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.details }
  }

  static fromJSON(value: unknown): VrioError {
    const v = (value ?? {}) as Record<string, unknown>
    const { code, message, ...details } = v
    return new VrioError(
      typeof code === 'string' ? code : 'unknown',
      typeof message === 'string' ? message : 'unknown error',
      details,
    )
  }
}

export function isVrioError(error: unknown, code?: string): error is VrioError {
  return error instanceof VrioError && (code === undefined || error.code === code)
}
