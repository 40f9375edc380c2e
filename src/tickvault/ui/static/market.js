// Market: candles, volume, indicator overlays, RSI and MACD panes, fill/halt markers, live bars.
'use strict';
(async function market() {
  const symbolSel = document.getElementById('symbol');
  const tfSel = document.getElementById('timeframe');
  const status = document.getElementById('live-status');
  const empty = document.getElementById('empty');
  const cfg = await getJSON('/api/config');
  const params = new URLSearchParams(location.search);
  cfg.symbols.forEach((s) => symbolSel.add(new Option(s, s)));
  cfg.timeframes.forEach((t) => tfSel.add(new Option(t, t)));
  if (params.get('symbol')) { if (!cfg.symbols.includes(params.get('symbol'))) symbolSel.add(new Option(params.get('symbol'))); symbolSel.value = params.get('symbol'); }
  if (params.get('tf')) tfSel.value = params.get('tf');

  const chart = TV.createChart(document.getElementById('chart'), chartOptions());
  const candles = chart.addSeries(TV.CandlestickSeries, {
    upColor: '#26a69a', downColor: '#ef5350', borderVisible: false, wickUpColor: '#26a69a', wickDownColor: '#ef5350',
  });
  const volume = chart.addSeries(TV.HistogramSeries, { priceFormat: { type: 'volume' }, priceScaleId: 'volume', lastValueVisible: false, priceLineVisible: false });
  volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  const line = (color, pane, extra) => chart.addSeries(TV.LineSeries, Object.assign({
    color, lineWidth: 1, priceLineVisible: false, lastValueVisible: false, crosshairMarkerVisible: false,
  }, extra || {}), pane || 0);
  const overlays = {
    ema_12: line('#f5c542'), ema_26: line('#e08a2c'), sma_20: line('#6ab0f3'),
    bb_upper: line('#8e7cc3', 0, { lineStyle: 2 }), bb_middle: line('#8e7cc3', 0, { lineStyle: 1 }), bb_lower: line('#8e7cc3', 0, { lineStyle: 2 }),
    vwap: line('#d16ba5', 0, { lineWidth: 2 }),
  };
  const groups = { ema: ['ema_12', 'ema_26'], sma: ['sma_20'], bb: ['bb_upper', 'bb_middle', 'bb_lower'], vwap: ['vwap'] };
  const panes = {
    rsi_14: line('#6ab0f3', 1, { lastValueVisible: true }),
    macd: line('#26a69a', 2, { lastValueVisible: true }), macd_signal: line('#ef9a50', 2),
    macd_hist: chart.addSeries(TV.HistogramSeries, { priceLineVisible: false, lastValueVisible: false }, 2),
  };
  panes.rsi_14.createPriceLine({ price: 70, color: '#555', lineStyle: 2, axisLabelVisible: false });
  panes.rsi_14.createPriceLine({ price: 30, color: '#555', lineStyle: 2, axisLabelVisible: false });
  const markers = TV.createSeriesMarkers(candles, []);
  Object.assign(tv, { chart, candles, volume, overlays, panes, markers });

  document.querySelectorAll('input[data-overlay]').forEach((box) => box.addEventListener('change', () => {
    groups[box.dataset.overlay].forEach((k) => overlays[k].applyOptions({ visible: box.checked }));
  }));

  let lastTime = 0; // newest candle drawn (seconds)
  let source = null;
  let refetchTimer = null;

  const candle = (d, i) => ({ time: d.t[i], open: d.o[i], high: d.h[i], low: d.l[i], close: d.c[i] });
  const vol = (d, i) => ({ time: d.t[i], value: d.v[i], color: d.c[i] >= d.o[i] ? '#26a69a66' : '#ef535066' });
  const point = (d, name, i) => {
    const v = d.ind[name][i];
    if (v === null || v !== v) return { time: d.t[i] }; // null (JSON) or NaN (binary): no value yet
    if (name === 'macd_hist') return { time: d.t[i], value: v, color: v >= 0 ? '#26a69a99' : '#ef535099' };
    return { time: d.t[i], value: v };
  };
  const indicatorSeries = () => Object.entries(Object.assign({}, overlays, panes));

  // Columns may be typed arrays (their map() would coerce the objects to numbers): a plain loop.
  const rows = (n, make) => {
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = make(i);
    return out;
  };

  const markerRows = (d) => d.markers.map((m) => m.kind === 'fill'
    ? { time: m.t - (m.t % widthOf(d.timeframe)), position: m.side === 'buy' ? 'belowBar' : 'aboveBar', shape: m.side === 'buy' ? 'arrowUp' : 'arrowDown', color: m.side === 'buy' ? '#26a69a' : '#ef5350', text: m.text }
    : { time: m.t - (m.t % widthOf(d.timeframe)), position: 'aboveBar', shape: 'square', color: '#e0a030', text: m.text });

  function draw(d) {
    const t0 = performance.now();
    const n = d.t.length;
    candles.setData(rows(n, (i) => candle(d, i)));
    volume.setData(rows(n, (i) => vol(d, i)));
    indicatorSeries().forEach(([name, s]) => s.setData(rows(n, (i) => point(d, name, i))));
    markers.setMarkers(markerRows(d));
    lastTime = d.t.length ? d.t[d.t.length - 1] : 0;
    const paneList = chart.panes(); // RSI and MACD panes: fixed heights, the candles take the rest
    if (paneList.length === 3) { paneList[1].setHeight(110); paneList[2].setHeight(130); }
    empty.hidden = d.t.length > 0;
    tv.loaded = { symbol: d.symbol, timeframe: d.timeframe, bars: d.t.length, draw_ms: performance.now() - t0 };
  }

  // Newer-or-equal bars only: the chart library accepts updates of the last bar and appends.
  function apply(d) {
    for (let i = 0; i < d.t.length; i++) {
      if (d.t[i] < lastTime) continue;
      candles.update(candle(d, i));
      volume.update(vol(d, i));
      indicatorSeries().forEach(([name, s]) => s.update(point(d, name, i)));
      lastTime = d.t[i];
    }
    empty.hidden = lastTime > 0;
  }

  function widthOf(tf) { return { '1m': 60, '5m': 300, '1h': 3600, '1d': 86400 }[tf]; }

  // A long window (?days=30 of 1-minute bars: 43,000 candles and 11 indicator series) opens with its
  // newest part, the timeframe's default window (more than a screen holds), and loads the older bars
  // as the user scrolls back, each request as long as what is already loaded (1, 1, 2, 4, 8, 14
  // days), so the chart is drawn in well under a second and scrolling to the first bar costs about
  // two full draws, not one per day. Binary columns (getBars): exact doubles, no JSON.parse.
  const firstDays = { '1m': 1, '5m': 5, '1h': 60, '1d': 730 };
  const SCREEN_BARS = 300; // about what a wide screen shows at the chart's default bar spacing
  let hist = null; // what is loaded of this page's window: {symbol, tf, floor, cursor, end, complete, chunks}
  let loadingOlder = null;
  let loadGen = 0; // each load() takes the next number; an older one still awaiting stops where it is
  tv.superseded = 0; // loads that stopped so (tests wait on it)

  function prepend(d) {
    const n = d.t.length;
    if (!n) return;
    const keep = (series, older) => series.setData(older.concat(series.data()));
    keep(candles, rows(n, (i) => candle(d, i)));
    keep(volume, rows(n, (i) => vol(d, i)));
    indicatorSeries().forEach(([name, s]) => keep(s, rows(n, (i) => point(d, name, i))));
    markers.setMarkers(markerRows(d).concat(markers.markers()));
  }

  async function loadOlder() {
    if (!hist || hist.complete) return hist;
    if (loadingOlder) return loadingOlder;
    const h = hist;
    loadingOlder = (async () => {
      const days = Math.max(firstDays[h.tf], (h.end - h.cursor) / 86400);
      const span = Math.min(days, (h.cursor - h.floor) / 86400);
      const t0 = performance.now();
      const d = await getBars(`/api/bars?format=f64&symbol=${encodeURIComponent(h.symbol)}&tf=${h.tf}&before=${h.cursor}&days=${span}`);
      if (hist !== h) return h; // the page moved to another symbol or timeframe meanwhile
      prepend(d);
      // A chunk cut at the row limit continues from its oldest bar; otherwise from its start.
      h.cursor = d.t.length >= d.limit ? d.t[0] : d.start;
      // The server keeps microseconds: a second of slack. A chart holds at most one request's row
      // limit (MAX_BARS, "more candles than this is unreadable"): past it, scrolling back stops.
      h.capped = candles.data().length >= d.limit;
      h.complete = h.cursor <= h.floor + 1 || h.capped;
      h.chunks.push({ days: span, bars: d.t.length, ms: performance.now() - t0 });
      tv.loaded.bars = candles.data().length;
      return h;
    })().finally(() => { loadingOlder = null; });
    return loadingOlder;
  }
  tv.loadOlder = loadOlder; // tests and the benchmark scroll back this way, without a mouse

  chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
    if (range && range.from < 20 && hist && !hist.complete) loadOlder();
  });

  async function load() {
    const mine = ++loadGen;
    const tf = tfSel.value;
    const symbol = symbolSel.value;
    if (!symbol) { empty.hidden = false; status.textContent = 'no symbols with bars yet'; return; }
    const days = params.get('days'); // optional: a longer (or shorter) window than the timeframe's default
    const range = days ? `&days=${encodeURIComponent(days)}` : '';
    history.replaceState(null, '', `?symbol=${encodeURIComponent(symbol)}&tf=${tf}${range}`);
    const span = days ? Number(days) : firstDays[tf];
    const first = Math.min(span, firstDays[tf]);
    const d = await getBars(`/api/bars?format=f64&symbol=${encodeURIComponent(symbol)}&tf=${tf}&days=${first}`);
    if (mine !== loadGen) { tv.superseded++; return; } // another symbol or timeframe chosen meanwhile: that load draws
    draw(d);
    const floor = d.end - 86400 - span * 86400; // the window's start (its end is a day ahead of now)
    const cursor = d.t.length >= d.limit ? d.t[0] : d.start;
    hist = { symbol, tf, floor, cursor, end: d.start + first * 86400, complete: cursor <= floor + 1,
             chunks: [{ days: first, bars: d.t.length }] };
    tv.history = hist;
    // A quiet newest day (a weekend) leaves the screen near empty and nothing to scroll: fill it.
    while (mine === loadGen && !hist.complete && candles.data().length < SCREEN_BARS) await loadOlder();
    if (mine !== loadGen) { tv.superseded++; return; } // a newer load owns the chart and the live stream now
    chart.timeScale().scrollToRealTime();
    if (source) source.close();
    // 1-minute pages take the pushed bars as they are; longer timeframes re-read their newest
    // buckets when minutes arrive, at most every few seconds.
    const refetchEvery = { '1m': 0, '5m': 5000, '1h': 15000, '1d': 30000 }[tf];
    source = liveStream(symbol, {
      bars: (live) => {
        if (tf === '1m') { apply(live); return; }
        if (refetchTimer) return;
        refetchTimer = setTimeout(async () => {
          refetchTimer = null;
          apply(await getBars(`/api/bars?format=f64&symbol=${encodeURIComponent(symbol)}&tf=${tf}&days=${2 * widthOf(tf) / 86400}`));
        }, refetchEvery);
      },
      resync: () => load(),
    }, status);
  }

  symbolSel.addEventListener('change', load);
  tfSel.addEventListener('change', load);
  await load();
})().catch((e) => { document.getElementById('live-status').textContent = `error: ${e.message}`; throw e; });
