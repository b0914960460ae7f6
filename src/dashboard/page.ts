/**
 * The dashboard page: HTML, CSS and a plain script (no build step; uPlot's own built files are
 * served from node_modules beside them). The script polls /api/figures and /api/history once a
 * second, draws one uPlot per plot group the server lists, and fills the tables with textContent
 * only: guest, disk and NIC names may come from peers and are never parsed as HTML.
 * `window.vrioDashboard` exposes the plots and the data they were given (for tests and the curious).
 */

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vrio dashboard</title>
<link rel="stylesheet" href="/uplot/uPlot.min.css">
<link rel="stylesheet" href="/app.css">
</head>
<body>
<header>
  <h1>vrio dashboard</h1>
  <span id="source"></span>
  <span id="status" class="status">connecting…</span>
</header>
<main>
  <section>
    <h2>Guests</h2>
    <table id="guests"><thead><tr>
      <th>guest</th><th>channel</th><th>RTT ms</th><th>in MB/s</th><th>out MB/s</th><th>drops/s</th><th>retrans/s</th><th>IOPS</th><th>disk MB/s</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Disks</h2>
    <table id="disks"><thead><tr>
      <th>disk</th><th>IOPS</th><th>read IOPS</th><th>write IOPS</th><th>read MB/s</th><th>write MB/s</th><th>p50 ms</th><th>p99 ms</th><th>in flight</th><th>errors/s</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>NICs</h2>
    <table id="nics"><thead><tr>
      <th>NIC</th><th>in Gbit/s</th><th>out Gbit/s</th><th>in frames/s</th><th>out frames/s</th><th>drops/s</th><th>DPI alerts/s</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section id="plots"></section>
</main>
<script src="/uplot/uPlot.iife.min.js"></script>
<script src="/app.js"></script>
</body>
</html>
`

export const PAGE_CSS = `
body { font-family: system-ui, sans-serif; margin: 0; background: #fafafa; color: #222; }
header { display: flex; gap: 1em; align-items: baseline; padding: .5em 1em; background: #23395d; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
.status { margin-left: auto; }
.status.error { color: #ffb3b3; }
main { padding: 0 1em 1em; }
h2 { font-size: 1em; margin: 1em 0 .3em; }
table { border-collapse: collapse; font-size: .85em; }
th, td { padding: .15em .6em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; font-family: monospace; }
td.state-connected { color: #16803c; }
td.state-other { color: #b42318; font-weight: bold; }
#plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; margin-top: 1em; }
.plot { background: #fff; border: 1px solid #ddd; padding: .3em; }
.plot h3 { font-size: .9em; margin: .2em .4em; }
`

export const PAGE_JS = String.raw`'use strict';
(function () {
  var WINDOW_S = 600;
  var COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  var state = { groups: [], series: [], t: [], values: [], lastT: null, plots: {}, plotKeys: {}, figures: null };
  window.vrioDashboard = state;

  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return '-';
    return v.toFixed(digits === undefined ? 1 : digits);
  }
  function scaled(v, by, digits) { return v === null || v === undefined ? '-' : fmt(v / by, digits); }
  function sum(a, b) { return a === null || b === null ? null : a + b; }
  function deviceLabel(guest, name) { return guest === '' ? name : guest + '/' + name; }

  function fillTable(id, rows) {
    var body = document.querySelector('#' + id + ' tbody');
    var tbody = document.createElement('tbody');
    rows.forEach(function (row) {
      var tr = document.createElement('tr');
      tr.setAttribute('data-name', row.name);
      row.cells.forEach(function (cell, i) {
        var td = document.createElement('td');
        td.textContent = String(cell);
        if (row.classes && row.classes[i]) td.className = row.classes[i];
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    body.replaceWith(tbody);
  }

  function showFigures(f) {
    state.figures = f;
    fillTable('guests', f.guests.map(function (g) {
      return {
        name: g.guest,
        cells: [g.guest, g.state, scaled(g.rttSeconds, 1e-3, 2), scaled(g.inBytesPerSec, 1e6), scaled(g.outBytesPerSec, 1e6),
          fmt(g.dropsPerSec), fmt(g.retransmitsPerSec), fmt(g.iops, 0), scaled(g.diskBytesPerSec, 1e6)],
        classes: [null, g.state === 'connected' ? 'state-connected' : 'state-other'],
      };
    }));
    fillTable('disks', f.disks.map(function (d) {
      var name = deviceLabel(d.guest, d.disk);
      return {
        name: name,
        cells: [name, fmt(d.iops, 0), fmt(d.readIops, 0), fmt(d.writeIops, 0), scaled(d.readBytesPerSec, 1e6), scaled(d.writeBytesPerSec, 1e6),
          scaled(d.p50, 1e-3, 3), scaled(d.p99, 1e-3, 3), fmt(d.inFlight, 0), fmt(d.errorsPerSec)],
      };
    }));
    fillTable('nics', f.nics.map(function (n) {
      var name = deviceLabel(n.guest, n.nic);
      return {
        name: name,
        cells: [name, scaled(n.inBitsPerSec, 1e9, 3), scaled(n.outBitsPerSec, 1e9, 3), fmt(n.inFramesPerSec, 0), fmt(n.outFramesPerSec, 0),
          fmt(n.dropsPerSec), fmt(n.alertsPerSec)],
      };
    }));
  }

  function sameKeys(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i].key !== b[i].key) return false;
    return true;
  }

  // Merges an answer of /api/history into state; false when a full reload is needed.
  function mergeHistory(h, incremental) {
    if (incremental && !sameKeys(h.series, state.series)) return false;
    if (!incremental) {
      state.series = h.series;
      state.t = h.t.slice();
      state.values = h.values.map(function (c) { return c.slice(); });
    } else {
      Array.prototype.push.apply(state.t, h.t);
      h.values.forEach(function (c, i) { Array.prototype.push.apply(state.values[i], c); });
    }
    var cut = 0;
    var newest = state.t.length ? state.t[state.t.length - 1] : 0;
    while (cut < state.t.length && state.t[cut] <= newest - WINDOW_S * 1000) cut++;
    if (cut > 0) {
      state.t.splice(0, cut);
      state.values.forEach(function (c) { c.splice(0, cut); });
    }
    if (state.t.length) state.lastT = state.t[state.t.length - 1];
    return true;
  }

  function plotWidth() {
    var el = document.getElementById('plots');
    var cols = Math.max(1, Math.floor(el.clientWidth / 580));
    return Math.max(400, Math.floor(el.clientWidth / cols) - 30);
  }

  function drawPlots() {
    var container = document.getElementById('plots');
    var xs = state.t.map(function (t) { return t / 1000; });
    state.groups.forEach(function (g) {
      var idx = [];
      state.series.forEach(function (s, i) { if (s.group === g.id) idx.push(i); });
      var keys = idx.map(function (i) { return state.series[i].key; }).join('\n');
      // Copies: what uPlot holds is what it was last given (and drew), not arrays that grow under it.
      var data = [xs].concat(idx.map(function (i) { return state.values[i].slice(); }));
      var box = document.getElementById('plot-' + g.id);
      if (!box) {
        box = document.createElement('div');
        box.className = 'plot';
        box.id = 'plot-' + g.id;
        var h = document.createElement('h3');
        h.textContent = g.title;
        box.appendChild(h);
        container.appendChild(box);
      }
      var plot = state.plots[g.id];
      if (plot && state.plotKeys[g.id] === keys) {
        plot.setData(data);
        return;
      }
      if (plot) plot.destroy();
      var series = [{}].concat(idx.map(function (i, n) {
        return { label: state.series[i].label, stroke: COLORS[n % COLORS.length], width: 1.5, spanGaps: false,
          value: function (u, v) { return v === null || v === undefined ? '-' : v.toFixed(2); } };
      }));
      state.plots[g.id] = new uPlot({
        width: plotWidth(), height: 220, series: series,
        scales: { x: { time: true } },
        axes: [{}, { label: g.unit, size: 60 }],
      }, data, box);
      state.plotKeys[g.id] = keys;
    });
  }

  async function getJson(path) {
    var r = await fetch(path, { cache: 'no-store' });
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  async function poll() {
    var status = document.getElementById('status');
    try {
      var f = await getJson('/api/figures');
      state.groups = f.groups;
      document.getElementById('source').textContent = f.source + (f.figures && f.figures.role ? ' (' + f.figures.role + ')' : '');
      if (f.figures) showFigures(f.figures);
      var incremental = state.lastT !== null;
      var h = await getJson('/api/history' + (incremental ? '?after=' + state.lastT : ''));
      if (!mergeHistory(h, incremental)) mergeHistory(await getJson('/api/history'), false);
      drawPlots();
      status.textContent = f.error ? 'scrape failing: ' + f.error : 'live, ' + new Date(f.figures ? f.figures.at : Date.now()).toLocaleTimeString();
      status.className = f.error ? 'status error' : 'status';
    } catch (e) {
      status.textContent = 'dashboard unreachable: ' + e.message;
      status.className = 'status error';
    }
    setTimeout(poll, 1000);
  }
  window.addEventListener('resize', function () {
    Object.keys(state.plots).forEach(function (id) { state.plots[id].setSize({ width: plotWidth(), height: 220 }); });
  });
  poll();
})();
`
