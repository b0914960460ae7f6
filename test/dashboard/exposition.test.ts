/** The Prometheus text-format parser the dashboard and `vrio top` read daemons' metrics with. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { labelKey, parseExposition, parseValue } from '../../src/dashboard/exposition.ts'
import { isVrioError } from '../../src/errors.ts'
import { escapeLabel, exposition } from './fixtures.ts'

describe('parseExposition', () => {
  it('reads HELP/TYPE, samples with and without labels, special values and timestamps', () => {
    const e = parseExposition(
      [
        '# HELP vrio_disk_requests_total Requests served.',
        '# TYPE vrio_disk_requests_total counter',
        'vrio_disk_requests_total{guest="02:00:00:00:00:01",disk="d1",op="read"} 1234',
        'vrio_disk_requests_total{op="write", disk="d1",guest="02:00:00:00:00:01",} 5e3 1700000000000',
        '# a comment',
        '',
        'vrio_channel_rtt_seconds{guest="x"} NaN',
        'vrio_disk_service_seconds_bucket{le="+Inf"} +Inf',
        'process_cpu_seconds_total -Inf',
        'nodejs_version_info{version="v20.19.0",major="20"} 1',
      ].join('\n'),
    )
    assert.equal(e.types.get('vrio_disk_requests_total'), 'counter')
    assert.equal(e.samples.length, 6)
    const [r, w] = e.byName.get('vrio_disk_requests_total') ?? []
    assert.deepEqual(r.labels, { guest: '02:00:00:00:00:01', disk: 'd1', op: 'read' })
    assert.equal(r.value, 1234)
    assert.equal(w.value, 5000)
    assert.equal(w.labels.op, 'write')
    assert.ok(Number.isNaN(e.byName.get('vrio_channel_rtt_seconds')?.[0].value))
    assert.equal(e.byName.get('vrio_disk_service_seconds_bucket')?.[0].value, Number.POSITIVE_INFINITY)
    assert.equal(e.byName.get('process_cpu_seconds_total')?.[0].value, Number.NEGATIVE_INFINITY)
  })

  it('unescapes label values (\\\\, \\", \\n) as prom-client escapes them: any string round-trips', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.string(), (a, b) => {
        const e = parseExposition(exposition([['m', { disk: a, guest: b }, 1]]))
        assert.deepEqual(e.samples[0].labels, { disk: a, guest: b })
      }),
    )
    const e = parseExposition(`m{disk="${escapeLabel('a"b\\c\nd')}"} 1\n`)
    assert.equal(e.samples[0].labels.disk, 'a"b\\c\nd')
  })

  it('refuses malformed lines with a bad-metrics error naming the line', () => {
    for (const [text, why] of [
      ['m{disk="unterminated} 1', /unterminated/],
      ['m{disk="x" 1', /expected ',' or '}'/],
      ['m{disk="\\q"} 1', /bad escape/],
      ['m 1x', /bad value/],
      ['m', /expected a value/],
      ['{disk="x"} 1', /metric name/],
      ['m{a="1",a="2"} 1', /given twice/],
      ['m 1 2.5', /bad timestamp/],
    ] as const) {
      assert.throws(
        () => parseExposition(`ok 1\n${text}\n`),
        (e: unknown) => isVrioError(e, 'bad-metrics') && why.test(e.message) && /line 2/.test(e.message),
        text,
      )
    }
  })
})

describe('parseValue and labelKey', () => {
  it('values: floats, NaN, +Inf/Inf, -Inf; nothing else', () => {
    assert.equal(parseValue('1.5e-3'), 0.0015)
    assert.equal(parseValue('-2'), -2)
    assert.equal(parseValue('.5'), 0.5)
    assert.equal(parseValue('Inf'), Number.POSITIVE_INFINITY)
    // prom-client writes NaN as `Nan`; Prometheus reads the special words in any case.
    assert.ok(Number.isNaN(parseValue('Nan')))
    assert.equal(parseValue('+inf'), Number.POSITIVE_INFINITY)
    assert.equal(parseValue('-INF'), Number.NEGATIVE_INFINITY)
    for (const bad of ['', '0x10', '1,5', 'in', '1e', 'abc', 'nann'])
      assert.equal(parseValue(bad), undefined, bad)
  })

  it('a label set has one key whatever the order; `omit` leaves one label out', () => {
    assert.equal(labelKey({ a: '1', b: '2' }), labelKey({ b: '2', a: '1' }))
    assert.notEqual(labelKey({ a: '1', b: '2' }), labelKey({ a: '1', b: '3' }))
    assert.equal(labelKey({ a: '1', le: '0.1' }, 'le'), labelKey({ a: '1', le: '+Inf' }, 'le'))
  })
})
