import { describe, it } from 'node:test'
import { CHANNEL_MODES, inMode, memoryHarness } from '../support/harness.ts'
import { conformanceCases } from '../integration/conformance-cases.ts'

const faulty = {
  loss: 0.05,
  duplicate: 0.01,
  reorder: 0.1,
  reorderDelay: 5,
  corrupt: 0.01,
  delay: 5,
  jitter: 0.5,
  gro: 0.2,
  mtu: 65_535,
}

for (const mode of CHANNEL_MODES) {
  describe(`transport conformance (${mode.name}): in-memory link`, () => {
    for (const c of conformanceCases)
      it(c.name, () => c.run(inMode(memoryHarness(7), mode.insecurePlaintext)))
  })

  describe(`transport conformance (${mode.name}): in-memory link with 5% loss, duplication, reordering, 5 ms delay`, () => {
    for (const c of conformanceCases)
      it(c.name, () => c.run(inMode(memoryHarness(8, faulty), mode.insecurePlaintext)))
  })
}
