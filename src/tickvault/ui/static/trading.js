// Trading: orders, fills, positions, realized P&L, open reconciliation differences, profiling
// reports, Prefect runs, and the kill switch where it is enabled.
'use strict';
(async function trading() {
  const cfg = await getJSON('/api/config');
  const REFRESH_MS = 5000; // tables are re-read this often (small, indexed queries)

  async function load() {
    const t = await getJSON('/api/trading');
    const halt = document.getElementById('halt');
    halt.hidden = !t.halt;
    if (t.halt) halt.textContent = `Trading halted since ${fmtTime(t.halt.halted_at)}: ${t.halt.reason}. Strategies' new orders are refused.`;
    fillTable(document.getElementById('open_orders'), t.open_orders);
    fillTable(document.getElementById('positions'), t.positions);
    const pnlError = document.getElementById('pnl-error');
    pnlError.hidden = !t.pnl_error;
    pnlError.textContent = t.pnl_error ? `Realized P&L cannot be computed: ${t.pnl_error}` : '';
    fillTable(document.getElementById('pnl'), t.pnl);
    fillTable(document.getElementById('fills'), t.fills);
    fillTable(document.getElementById('orders'), t.orders);
    const r = t.last_reconcile;
    document.getElementById('last-reconcile').textContent = r
      ? `Last reconciliation run #${r.id} at ${fmtTime(r.started_at)}: ${r.status}, ${fmt(r.diffs, 0)} difference(s), ${fmt(r.repaired, 0)} repaired.${r.error ? ' Error: ' + r.error : ''}`
      : 'No reconciliation run yet (the reconcile flow, every 5 minutes in market hours once deployed).';
    fillTable(document.getElementById('diffs'), t.diffs);
    fillTable(document.getElementById('profiles'), t.profiles,
      ['time', 'worker', 'duration_s', 'cpu_percent', 'rss_mb', 'regressions', 'flamegraph'],
      {
        flamegraph: (td, _v, row) => {
          if (!row.flamegraph_key) { td.textContent = '–'; return; }
          const a = document.createElement('a'); a.href = `/profiles/${row.id}/flamegraph`; a.textContent = 'flame graph'; a.target = '_blank';
          td.appendChild(a);
        },
        regressions: (td, v) => { td.className = 'text'; td.textContent = v && v.length ? v.map((x) => x.function || JSON.stringify(x)).join(', ') : 'none'; },
      });
    fillTable(document.getElementById('audit'), t.audit);
  }

  async function loadPrefect() {
    const p = await getJSON('/api/prefect');
    const note = document.getElementById('prefect-note');
    note.replaceChildren();
    const a = document.createElement('a'); a.href = p.ui; a.textContent = 'the Prefect UI'; a.target = '_blank';
    note.append(p.reachable ? 'Latest run of each flow; all runs in ' : 'Prefect API not reachable; flows and runs are in ', a, '.');
    fillTable(document.getElementById('prefect'), p.flows, ['flow', 'run', 'state', 'start'], {
      run: (td, v, row) => { const l = document.createElement('a'); l.href = row.url; l.textContent = v; l.target = '_blank'; td.appendChild(l); },
    });
  }

  if (cfg.kill_switch) {
    document.getElementById('kill').hidden = false;
    const result = document.getElementById('kill-result');
    const post = async (url, body) => {
      try {
        const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
        const j = await r.json();
        result.textContent = r.ok ? JSON.stringify(j) : `refused: ${j.error}`;
      } catch (e) { result.textContent = `failed: ${e.message}`; }
      load();
    };
    const token = () => document.getElementById('kill-token').value;
    document.getElementById('kill-engage').addEventListener('click', () => {
      if (confirm('Halt all strategy orders and cancel every open order at the broker?')) {
        post('/api/kill-switch', { token: token(), reason: document.getElementById('kill-reason').value });
      }
    });
    document.getElementById('kill-lift').addEventListener('click', () => post('/api/kill-switch/lift', { token: token() }));
  }

  await load();
  await loadPrefect();
  tv.tradingLoaded = true;
  setInterval(load, REFRESH_MS);
})().catch((e) => { document.querySelector('main').prepend(`error: ${e.message}`); throw e; });
