/**
 * Worker thread: checks and compiles one request's rules files (compile.ts) off the IOhyp's event
 * loop, and posts back the result (the prefilter automata's buffers transferred, not copied) or the error.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { isVrioError } from '../../errors.ts'
import { type CompileRequest, compileRules } from './compile.ts'

const port = parentPort
if (port) {
  try {
    const result = compileRules(workerData as CompileRequest)
    const buffers = new Set<ArrayBuffer>()
    // The automata's typed arrays, however deep in the tables.
    const collect = (v: unknown): void => {
      if (ArrayBuffer.isView(v)) {
        if (v.buffer instanceof ArrayBuffer) buffers.add(v.buffer)
      } else if (v && typeof v === 'object') {
        for (const x of Object.values(v)) collect(x)
      }
    }
    collect(result.tables)
    port.postMessage({ ok: true, result }, [...buffers])
  } catch (error) {
    port.postMessage({
      ok: false,
      error: isVrioError(error)
        ? error.toJSON()
        : { code: 'invalid-rules', message: `compiling rules failed: ${(error as Error).message}` },
    })
  }
}
