// Ingest health: per-worker figures from ingest_stats (table + charts over time, live), TimescaleDB
// job health, chunk sizes and what retention drops next.
'use strict';
(async function health() {
  const workerSel = document.getElementById('worker');
  const minutesSel = document.getElementById('minutes');
  const status = document.getElementById('live-status');
  const STALE_S = 60; // a worker silent this long is shown as stale (the alert uses its own setting)

  const charts = {};
  const series = {};
  function small(id, lines) {
    const c = TV.createChart(document.getElementById(id), chartOptions({ timeScale: { timeVisible: true, secondsVisible: true } }));
    charts[id] = c;
    lines.forEach(([key, color, kind, scale]) => {
      series[key] = c.addSeries(kind === 'bar' ? TV.HistogramSeries : TV.LineSeries, {
        color, lineWidth: 1, priceLineVisible: false, title: key, priceScaleId: scale || 'right',
      });
    });
  }
  small('c-rates', [['trades_per_s', '#26a69a'], ['rows_committed_per_s', '#6ab0f3']]);
  small('c-latency', [['received_to_processed_p99_ms', '#f5c542'], ['received_to_committed_p99_ms', '#ef5350']]);
  small('c-queue', [['queue_depth', '#8e7cc3']]);
  small('c-process', [['rss_mb', '#6ab0f3'], ['cpu_percent', '#e08a2c', 'line', 'left']]);
  charts['c-process'].applyOptions({ leftPriceScale: { visible: true, borderColor: '#2a323c' } });
  small('c-events', [['reconnects', '#ef5350', 'bar'], ['rejects', '#e0a030', 'bar'], ['backfilled', '#26a69a', 'bar'], ['stalls', '#8e7cc3', 'bar']]);
  Object.assign(tv, { charts, series });

  let last = 0; // newest row time drawn for the selected worker (seconds, may be fractional)
  const point = (r, key) => ({ time: Math.round(r.t), value: r[key] === null ? undefined : r[key] });

  function drawHistory(rows) {
    Object.entries(series).forEach(([key, s]) => {
      const seen = new Map();
      rows.forEach((r) => { if (r[key] !== null && r[key] !== undefined) seen.set(Math.round(r.t), point(r, key)); });
      s.setData([...seen.values()]);
    });
    last = rows.length ? rows[rows.length - 1].t : 0;
    tv.healthRows = rows.length;
  }

  function appendRows(rows) {
    rows.filter((r) => r.worker === workerSel.value && r.t > last).forEach((r) => {
      Object.entries(series).forEach(([key, s]) => {
        if (r[key] === null || r[key] === undefined) return;
        const data = s.data();
        if (data.length && data[data.length - 1].time > Math.round(r.t)) return;
        s.update(point(r, key));
      });
      last = r.t;
      tv.healthRows = (tv.healthRows || 0) + 1;
    });
  }

  function workerRow(w) {
    return [w.worker, `${fmt(w.age_s, 0)} s ago`, fmt(w.trades_per_s, 0), fmt(w.rows_committed_per_s, 0),
      fmt(w.received_to_processed_p99_ms, 3), fmt(w.received_to_committed_p99_ms, 1), fmt(w.exchange_to_received_p99_ms, 1),
      `${fmt(w.queue_depth, 0)} / ${fmt(w.queue_max, 0)}`, fmt(w.rss_mb, 0), fmt(w.cpu_percent, 0),
      fmt(w.reconnects, 0), fmt(w.rejects, 0), fmt(w.stalls, 0), fmt(w.backfilled, 0)];
  }

  function drawWorkers(workers) {
    const body = document.querySelector('#workers tbody');
    body.replaceChildren();
    workers.forEach((w) => {
      const tr = body.insertRow();
      tr.dataset.worker = w.worker;
      if (w.age_s > STALE_S) tr.className = 'stale';
      workerRow(w).forEach((v) => { tr.insertCell().textContent = v; });
    });
    if (!workers.length) body.insertRow().insertCell().textContent = 'no ingest_stats rows in the last day';
  }

  function drawJobs(jobs) {
    const body = document.querySelector('#jobs tbody');
    body.replaceChildren();
    jobs.forEach((j) => {
      const tr = body.insertRow();
      if (j.failing) tr.className = 'bad';
      [j.job_id, j.what, j.state, fmtTime(j.last_success), `${j.runs} / ${j.failures}`, j.last_error || ''].forEach((v, i) => {
        const td = tr.insertCell(); td.textContent = v; if (i === 1 || i === 5) td.className = 'text';
      });
    });
    if (!jobs.length) body.insertRow().insertCell().textContent = 'no background jobs';
  }

  function drawChunks(chunks) {
    const body = document.querySelector('#chunks tbody');
    body.replaceChildren();
    chunks.forEach((c) => {
      const tr = body.insertRow();
      const next = c.window_days === 0 ? 'kept forever' : c.next_drop_at
        ? `${c.droppable_now ? 'now' : fmtTime(c.next_drop_at)} (oldest chunk)` : 'nothing yet';
      [c.table, c.chunks, fmtBytes(c.bytes), c.window_days ? `${c.window_days} d (${c.setting})` : 'forever',
        fmtTime(c.oldest), next].forEach((v) => { tr.insertCell().textContent = v; });
    });
  }

  let workersSeen = [];
  async function loadSummary() {
    const h = await getJSON('/api/health');
    drawWorkers(h.workers);
    drawJobs(h.jobs);
    drawChunks(h.chunks);
    const names = h.workers.map((w) => w.worker);
    if (names.join() !== workersSeen.join()) {
      const keep = workerSel.value;
      workerSel.replaceChildren(...names.map((n) => new Option(n, n)));
      if (names.includes(keep)) workerSel.value = keep;
      workersSeen = names;
      if (!keep && names.length) await loadHistory();
    }
  }

  async function loadHistory() {
    if (!workerSel.value) return;
    const h = await getJSON(`/api/health/history?worker=${encodeURIComponent(workerSel.value)}&minutes=${minutesSel.value}`);
    drawHistory(h.rows);
  }

  workerSel.addEventListener('change', loadHistory);
  minutesSel.addEventListener('change', loadHistory);
  await loadSummary();
  await loadHistory();
  let summaryDue = 0;
  liveStream('health', {
    stats: (rows) => {
      appendRows(rows);
      if (Date.now() > summaryDue) { summaryDue = Date.now() + 5000; loadSummary(); } // the table, jobs and chunks
    },
    resync: () => { loadSummary(); loadHistory(); },
  }, status);
})().catch((e) => { document.getElementById('live-status').textContent = `error: ${e.message}`; throw e; });
