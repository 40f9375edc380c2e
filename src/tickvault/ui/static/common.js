// Shared by the three pages: fetching JSON, formatting, tables, chart defaults.
'use strict';
const TV = window.LightweightCharts;
const tv = (window.tv = window.tv || {});

document.querySelectorAll('nav a[data-nav]').forEach((a) => {
  if (a.dataset.nav === document.body.dataset.page) a.classList.add('active');
});

async function getJSON(url, options) {
  const r = await fetch(url, options);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${url}: HTTP ${r.status}`);
  return body;
}

// /api/bars?format=f64 (see app.py): a uint32 length, that much JSON, padding to 8 bytes, then each
// column as big-endian float64. Returns the JSON's shape ({t, o, h, l, c, v, ind: {...}, markers})
// with Float64Arrays for columns; NaN where an indicator has no value.
async function getBars(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error((await r.json()).error || `${url}: HTTP ${r.status}`);
  const buf = await r.arrayBuffer();
  const view = new DataView(buf);
  const metaLen = view.getUint32(0, true);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, metaLen)));
  const n = meta.count;
  let offset = Math.ceil((4 + metaLen) / 8) * 8;
  const d = { symbol: meta.symbol, timeframe: meta.timeframe, markers: meta.markers, limit: meta.limit,
              start: meta.start, end: meta.end, ind: {} };
  for (const name of meta.columns) {
    const col = new Float64Array(n);
    for (let i = 0; i < n; i++, offset += 8) col[i] = view.getFloat64(offset, false);
    if (['t', 'o', 'h', 'l', 'c', 'v'].includes(name)) d[name] = col; else d.ind[name] = col;
  }
  return d;
}

function fmt(v, digits = 1) {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'number') return v.toLocaleString(undefined, { maximumFractionDigits: digits });
  return String(v);
}

function fmtBytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtTime(v) {
  if (!v) return '–';
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  return d.toISOString().replace('T', ' ').slice(0, 19);
}

// A table from rows of objects: the columns are the first row's keys unless given.
function fillTable(table, rows, columns, cells) {
  table.replaceChildren();
  if (!rows || rows.length === 0) {
    const tr = table.insertRow();
    tr.insertCell().textContent = 'none';
    return;
  }
  columns = columns || Object.keys(rows[0]);
  const head = table.createTHead().insertRow();
  columns.forEach((c) => { const th = document.createElement('th'); th.textContent = c; head.appendChild(th); });
  const body = table.createTBody();
  rows.forEach((row) => {
    const tr = body.insertRow();
    columns.forEach((c) => {
      const td = tr.insertCell();
      const custom = cells && cells[c];
      if (custom) { custom(td, row[c], row); return; }
      const v = row[c];
      td.textContent = v !== null && typeof v === 'object' ? JSON.stringify(v) : fmt(v, 4);
      if (typeof v === 'string' && v.length > 24) td.className = 'text';
    });
  });
}

function chartOptions(extra) {
  return Object.assign({
    autoSize: true,
    layout: { background: { color: '#0f1419' }, textColor: '#8792a2', panes: { separatorColor: '#2a323c' } },
    grid: { vertLines: { color: '#1c232b' }, horzLines: { color: '#1c232b' } },
    timeScale: { timeVisible: true, secondsVisible: false, borderColor: '#2a323c' },
    rightPriceScale: { borderColor: '#2a323c' },
    crosshair: { mode: TV.CrosshairMode.Normal },
  }, extra || {});
}

// Server-sent events with a status line; the browser reconnects by itself after a drop.
function liveStream(topic, handlers, statusEl) {
  const es = new EventSource(`/api/live/${encodeURIComponent(topic)}`);
  es.onopen = () => { statusEl.textContent = 'live'; };
  es.onerror = () => { statusEl.textContent = 'reconnecting…'; };
  Object.entries(handlers).forEach(([event, fn]) => es.addEventListener(event, (e) => {
    fn(JSON.parse(e.data));
    statusEl.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  }));
  return es;
}
