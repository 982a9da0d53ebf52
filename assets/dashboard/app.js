// pixeld's dashboard: vanilla JS, no build step, no other origin. Everything it shows comes
// from the public JSON API, so this file is also a worked example of it:
//  - the realtime view (30 min) is pushed by GET /v1/live (server-sent events, read with
//    fetch streaming so that the bearer token can travel in a header, which EventSource
//    cannot send);
//  - longer views read /v1/timeseries, /v1/summary and /v1/top, refreshed when the live
//    stream says the aggregates changed (at most every 5 s), never on a blind timer;
//  - the health strip comes from the stream's `health` events: the counters of /metrics.
// State for tests and the curious: window.pixeldDashboard.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const nf = new Intl.NumberFormat(undefined);
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const pf = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 });
  // Okabe–Ito: distinguishable with every common colour-vision deficiency.
  const BLUE = '#0072B2', ORANGE = '#E69F00', VERMILLION = '#D55E00';

  const RANGES = {
    '30m': { minutes: 30, step: '1m', stepMin: 1, live: true, label: 'the last 30 minutes (live)' },
    '6h': { minutes: 360, step: '1m', stepMin: 1, label: 'the last 6 hours' },
    '24h': { minutes: 1440, step: '1h', stepMin: 60, label: 'the last 24 hours' },
    '7d': { minutes: 10080, step: '1h', stepMin: 60, label: 'the last 7 days' },
  };
  const REFRESH_MIN_MS = 5000;
  const SPARK_MIN_MS = 15000;
  const STALL_MS = 15000;

  const st = {
    site: '', range: '30m',
    token: sessionStorage.getItem('pixeld-token') || '',
    from: null, to: null,           // epoch seconds of the range shown
    headline: null, points: [], top: { pages: [], refs: [], sites: [] },
    // Top pages by views come with the summary; by another metric from /v1/top?sort=.
    pageSort: 'views', viewPages: [], sortedPages: null,
    prev: null, prevKey: '',
    sparks: {}, sparkKey: '', sparkAt: 0,
    lastRefresh: 0, refreshing: false, refreshAgain: false,
    live: { gen: 0, abort: null, lastId: null, retry: 3000, events: 0, snapshots: 0, lastHealth: null },
    chart: null, cursor: null,
    // Filters of the dimension cards: [dimension, value] pairs, all must hold.
    filters: [],
    // With filters: the matching pageviews' views and visitors, their previous period, and
    // their series ({t, views, uniques} per step), from POST /v1/query.
    filtered: null,
    // Per list (element id): key → its views' change against the previous period of the
    // same length ({change: %, or null when that period had none; prev: its views}).
    changes: {},
    // Per list (element id) that no cell answers under the filters, its last scan of the
    // raw log: {key, at, running, items, changes, range, meta, error, abort}.
    scans: {},
    // The live stream's last window end (epoch seconds), and all visitors of its last
    // minutes ("current visitors"); under filters, those with a matching pageview in the
    // same minutes ({range, visitors}), from POST /v1/query.
    liveTo: null, current: null, currentFiltered: null,
    // The server's error when it keeps a log only (agg.enabled = false), else null.
    off: null,
  };
  window.pixeldDashboard = st;

  class AuthError extends Error {}
  // The server keeps a log only (agg.enabled = false): shown once, never as an error.
  class OffError extends Error {}

  function showOff(text) {
    st.off = text;
    document.body.dataset.aggregation = 'off';
    $('agg-off-text').textContent = text;
    $('agg-off').hidden = false;
    status('log only: aggregation is off', 'warn');
  }

  function headers() {
    return st.token ? { Authorization: 'Bearer ' + st.token } : {};
  }

  async function api(path) {
    const r = await fetch(path, { headers: headers(), cache: 'no-store' });
    if (r.status === 401) { askToken(); throw new AuthError('token needed'); }
    const body = await r.json().catch(() => ({}));
    if (body.reason === 'aggregation_off') { showOff(body.error); throw new OffError(body.error); }
    if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
    return body;
  }

  async function apiPost(path, body, signal) {
    const r = await fetch(path, {
      method: 'POST', cache: 'no-store', signal,
      headers: { ...headers(), 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    if (r.status === 401) { askToken(); throw new AuthError('token needed'); }
    const out = await r.json().catch(() => ({}));
    if (out.reason === 'aggregation_off') { showOff(out.error); throw new OffError(out.error); }
    if (!r.ok) throw new Error(out.error || ('HTTP ' + r.status));
    return out;
  }

  const secs = (rfc3339) => Math.round(Date.parse(rfc3339) / 1000);
  const q = (o) => new URLSearchParams(Object.entries(o).filter(([, v]) => v !== '' && v != null)).toString();

  function status(text, kind) {
    const s = $('status');
    s.textContent = text;
    s.dataset.kind = kind || '';
  }

  // ---- token -------------------------------------------------------------------------------
  function askToken(message) {
    const box = $('auth');
    if (!box.hidden && !message) return;
    box.hidden = false;
    $('main').setAttribute('aria-hidden', 'true');
    $('auth-error').textContent = message || (st.token ? 'The token was refused.' : '');
    status('token needed', 'warn');
    $('token').focus();
  }

  $('auth-form').addEventListener('submit', (e) => {
    e.preventDefault();
    st.token = $('token').value.trim();
    sessionStorage.setItem('pixeld-token', st.token);
    $('auth').hidden = true;
    $('main').removeAttribute('aria-hidden');
    $('token').value = '';
    restart();
  });

  // ---- formatting --------------------------------------------------------------------------
  function duration(s) {
    if (s < 60) return nf.format(Math.round(s)) + ' s';
    if (s < 3600) return nf1.format(s / 60) + ' min';
    return nf1.format(s / 3600) + ' h';
  }

  function setTile(id, value, prev, fmt) {
    const tile = $(id);
    const v = tile.querySelector('.value');
    v.dataset.value = String(value);
    const d = tile.querySelector('.delta');
    if (value == null) {
      // A ratio of a range without visits.
      v.textContent = '–';
      d.textContent = '';
      d.dataset.dir = '';
      return;
    }
    v.textContent = fmt ? fmt(value) : nf.format(value);
    if (prev == null) { d.textContent = ''; d.dataset.dir = ''; return; }
    if (prev === 0) {
      d.textContent = value === 0 ? 'no change vs previous period' : 'new vs previous period (was 0)';
      d.dataset.dir = value === 0 ? 'flat' : 'up';
      return;
    }
    const ch = (value - prev) / prev;
    const dir = ch > 0 ? 'up' : ch < 0 ? 'down' : 'flat';
    // An arrow and a sign, not colour alone.
    d.textContent = (dir === 'up' ? '▲ +' : dir === 'down' ? '▼ ' : '■ ') + pf.format(ch) + ' vs previous period';
    d.dataset.dir = dir;
  }

  // ---- headline ----------------------------------------------------------------------------
  // Minutes the live stream's "current visitors" look back (query::CURRENT_VISITORS_MINUTES).
  const CURRENT_MINUTES = 5;
  // Engaged time is kept per site only (visits break down by their entry pageview's values):
  // under a filter on what a heartbeat's own line says (device, country…) it is read from the
  // log (loadScans); under any other (a channel: a heartbeat's line does not say its page's)
  // it is not known, and the tile says so.

  function renderHeadline() {
    const h = st.headline;
    if (!h) return;
    const p = st.prev;
    const f = st.filtered;
    $('main').dataset.filtered = String(!!f);
    if (f) {
      setTile('t-views', f.views, f.prevViews);
      setTile('t-uniques', f.visitors, f.prevVisitors);
      setTile('t-visits', f.visits, f.prev && f.prev[2]);
      setTile('t-bounce', f.bounceRate, f.prev && f.prev[3], (x) => pf.format(x));
      setTile('t-duration', f.visitDuration, f.prev && f.prev[4], duration);
      const e = scanShown('t-engaged');
      const tile = $('t-engaged');
      if (e) {
        setTile('t-engaged', e.value, e.prev, duration);
        tile.querySelector('.delta').textContent += (e.prev == null ? '' : ' · ') + 'from the log';
      } else {
        setTile('t-engaged', null);
        tile.querySelector('.delta').textContent = needsScan('t-engaged')
          ? (st.scans['t-engaged'] && st.scans['t-engaged'].error ? 'the log could not be read' : 'reading the log…')
          : 'not kept by dimension';
      }
      const s = st.scans['t-engaged'];
      if (needsScan('t-engaged') && s && s.key === scanKey()) {
        tile.dataset.scan = s.running && !e ? 'running' : s.error ? 'error' : 'done';
      } else delete tile.dataset.scan;
    } else {
      setTile('t-views', h.views, p && p.views);
      setTile('t-uniques', h.uniques, p && p.uniques);
      setTile('t-engaged', h.engaged_seconds, p && p.engaged_seconds, duration);
      setTile('t-visits', h.visits, p && p.visits);
      setTile('t-bounce', h.bounce_rate, p && p.bounce_rate, (x) => pf.format(x));
      setTile('t-duration', h.visit_duration, p && p.visit_duration, duration);
    }
    renderCurrent();
    const main = $('main');
    main.dataset.from = String(st.from);
    main.dataset.to = String(st.to);
    main.dataset.site = st.site;
    main.dataset.range = st.range;
    const from = new Date(st.from * 1000), to = new Date(st.to * 1000);
    $('range-text').textContent = (st.site || 'All sites') + ' · ' + RANGES[st.range].label + ' · ' +
      from.toLocaleString() + ' – ' + to.toLocaleString();
  }

  // Current visitors: the live stream's, or under filters those with a matching pageview in
  // the same last minutes (loadDims asks for them), said so.
  function renderCurrent() {
    const tile = $('t-current');
    const f = st.currentFiltered;
    if (st.filters.length) {
      const shown = f && f.key === JSON.stringify([st.site, st.filters]);
      setTile('t-current', shown ? f.visitors : null, null);
      tile.querySelector('.delta').textContent = shown ? 'with a matching pageview' : '';
      tile.dataset.filtered = String(!!shown);
    } else {
      if (st.current != null) setTile('t-current', st.current, null);
      tile.dataset.filtered = 'false';
    }
  }

  // The previous period of the same length, fetched once per range.
  async function loadPrevious() {
    const len = st.to - st.from;
    const key = [st.site, st.from, st.to].join('|');
    if (key === st.prevKey) return;
    st.prevKey = key;
    const gen = st.live.gen;
    let prev = null;
    try {
      prev = await api('/v1/summary?' + q({ from: st.from - len, to: st.from, site: st.site }));
    } catch (e) {
      if (e instanceof AuthError) throw e; // else older than the aggregates keep: no comparison
    }
    if (gen !== st.live.gen) return;
    st.prev = prev;
    renderHeadline();
  }

  // ---- chart -------------------------------------------------------------------------------
  function chartSize() {
    const el = $('chart');
    return { width: Math.max(el.clientWidth, 280), height: window.innerWidth < 600 ? 200 : 260 };
  }

  function renderChart() {
    // Filtered: the matching pageviews per step, on the steps of the range shown (the query
    // answers every step of its range, zeros included; a step it has not answered yet, the
    // newest in the live view, is a gap until the next answer).
    const f = st.filtered;
    const pts = f ? st.points.map((p) => f.points.get(secs(p.t)) || { t: p.t, views: null, uniques: null }) : st.points;
    $('chart-title').dataset.filtered = String(!!f);
    $('chart-filter').textContent = f ? '· ' + st.filters.map(([d, v]) => `${d}: ${v}`).join(', ') : '';
    const xs = pts.map((p) => secs(p.t));
    const data = [xs, pts.map((p) => p.views), pts.map((p) => p.uniques == null ? null : p.uniques)];
    const el = $('chart');
    el.dataset.points = String(pts.length);
    $('chart-step').textContent = '(' + (RANGES[st.range].stepMin === 1 ? 'per minute' : 'per hour') + ')';
    let peak = null;
    for (const p of pts) if (!peak || p.views > peak.views) peak = p;
    el.setAttribute('aria-label', 'Views and unique visitors, ' + nf.format(pts.length) + ' buckets' +
      (peak ? ', peak ' + nf.format(peak.views) + ' views at ' + new Date(peak.t).toLocaleString() : ''));
    if (!window.uPlot) return;
    if (st.chart) { st.chart.setData(data); return; }
    const opts = {
      ...chartSize(),
      cursor: { points: { size: 8 } },
      legend: { live: true },
      scales: { x: { time: true } },
      axes: [{}, { values: (u, v) => v.map((x) => nf.format(x)), size: 60 }],
      series: [
        { value: (u, v) => v == null ? '–' : new Date(v * 1000).toLocaleString() },
        { label: 'Views', stroke: BLUE, width: 2, fill: 'rgba(0,114,178,0.10)', value: (u, v) => v == null ? '–' : nf.format(v) },
        { label: 'Unique visitors', stroke: ORANGE, width: 2, dash: [6, 4], value: (u, v) => v == null ? '–' : nf.format(v) },
      ],
    };
    st.chart = new window.uPlot(opts, data, el);
  }

  // Keyboard: ← → move the cursor bucket by bucket (the legend shows its values).
  $('chart').addEventListener('keydown', (e) => {
    const u = st.chart;
    if (!u || !u.data[0].length) return;
    const n = u.data[0].length;
    let i = st.cursor == null ? n - 1 : st.cursor;
    if (e.key === 'ArrowLeft') i = Math.max(0, i - 1);
    else if (e.key === 'ArrowRight') i = Math.min(n - 1, i + 1);
    else if (e.key === 'Home') i = 0;
    else if (e.key === 'End') i = n - 1;
    else return;
    e.preventDefault();
    st.cursor = i;
    const left = u.valToPos(u.data[0][i], 'x');
    const top = u.valToPos(u.data[1][i] || 0, 'y');
    u.setCursor({ left, top });
  });
  $('chart').addEventListener('blur', () => { st.cursor = null; });

  // The chart follows its box (window resize, phone rotation), once per frame at most.
  let resizeFrame = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(() => {
      const size = chartSize();
      if (st.chart && (size.width !== st.chart.width || size.height !== st.chart.height)) st.chart.setSize(size);
    });
  }).observe(document.getElementById('main'));

  // ---- ranked lists ------------------------------------------------------------------------
  const SVG = 'http://www.w3.org/2000/svg';

  function sparkline(values) {
    const w = 90, h = 22;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('width', String(w));
    svg.setAttribute('height', String(h));
    svg.setAttribute('class', 'spark');
    svg.setAttribute('aria-hidden', 'true');
    if (!values || values.length < 2) return svg;
    const max = Math.max(1, ...values);
    const pts = values.map((v, i) => `${(i * (w - 2) / (values.length - 1) + 1).toFixed(1)},${(h - 1 - v * (h - 2) / max).toFixed(1)}`);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.appendChild(line);
    return svg;
  }

  const METRIC = {
    views: { label: 'views', fmt: (x) => nf.format(x), total: (h) => h.views },
    entries: { label: 'entries', fmt: (x) => nf.format(x), total: (h) => h.visits },
    exits: { label: 'exits', fmt: (x) => nf.format(x), total: (h) => h.visits },
    engaged_seconds: { label: 'engaged', fmt: (x) => duration(x), total: (h) => h.engaged_seconds },
    // A url's visitors against the range's uniques; a mean is no share of a total.
    visitors: { label: 'visitors', fmt: (x) => nf.format(x), total: (h) => h.uniques },
    avg_engaged_seconds: { label: 'engaged per visitor', fmt: (x) => duration(x), total: () => 0 },
    // Custom events against the range's custom events (`st.eventTotal`).
    events: { label: 'events', fmt: (x) => nf.format(x), total: () => st.eventTotal || 0 },
  };

  function renderList(id, items, total, withSpark, metric) {
    const m = METRIC[metric || 'views'];
    const ol = $(id);
    ol.replaceChildren();
    if (!items.length) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'nothing in this range';
      ol.appendChild(li);
      return;
    }
    for (const it of items) {
      const li = document.createElement('li');
      li.dataset.key = it.key;
      li.dataset.views = String(it.views);
      const share = total > 0 ? it.views / total : 0;
      const name = document.createElement('span');
      name.className = 'key';
      // The scheme is noise in a narrow column; the full key stays in the title.
      name.textContent = it.key.replace(/^https?:\/\//, '');
      name.title = it.key;
      const num = document.createElement('span');
      num.className = 'num';
      num.textContent = m.fmt(it.views);
      // Views against the previous period (another metric's list shows none).
      const c = metric && metric !== 'views' ? null : (st.changes[id] || new Map()).get(it.key);
      if (c) {
        const chg = document.createElement('small');
        chg.className = 'chg';
        const dir = c.change == null ? 'up' : c.change > 0 ? 'up' : c.change < 0 ? 'down' : 'flat';
        chg.dataset.dir = dir;
        li.dataset.change = c.change == null ? 'new' : String(c.change);
        chg.textContent = c.change == null ? (c.prev === 0 ? 'new' : '')
          : (dir === 'up' ? '▲ +' : dir === 'down' ? '▼ ' : '■ ') + nf1.format(c.change) + ' %';
        chg.title = 'views vs the previous period: ' + nf.format(c.prev);
        num.append(chg);
      }
      if (it.rate != null) {
        li.dataset.rate = String(it.rate);
        const conv = document.createElement('small');
        conv.className = 'conv';
        conv.textContent = pf.format(it.rate) + ' of visitors';
        conv.title = 'conversion rate: the share of visitors who sent it';
        num.append(conv);
      }
      if (it.all) {
        name.title = it.key + ' — ' + nf.format(it.all.views) + ' views, ' + nf.format(it.all.entries) +
          ' entries, ' + nf.format(it.all.exits) + ' exits, ' + duration(it.all.engaged_seconds) + ' engaged, ' +
          nf.format(it.all.visitors) + ' visitors' +
          (it.all.avg_engaged_seconds == null ? '' : ', ' + duration(it.all.avg_engaged_seconds) + ' engaged per visitor');
      }
      const pct = document.createElement('span');
      pct.className = 'pct';
      pct.textContent = total > 0 ? pf.format(share) : '';
      const bar = document.createElement('span');
      bar.className = 'share';
      const fill = document.createElement('span');
      fill.style.width = (share * 100).toFixed(1) + '%';
      bar.appendChild(fill);
      li.append(name);
      if (withSpark) li.append(sparkline(st.sparks[it.key]));
      li.append(num, pct, bar);
      li.setAttribute('aria-label', `${it.key}: ${m.fmt(it.views)} ${m.label}` + (total > 0 ? `, ${pf.format(share)} of all` : '') +
        (c && c.change != null ? `, ${nf1.format(c.change)} % vs previous period` : ''));
      ol.appendChild(li);
    }
  }

  function renderLists() {
    const total = st.headline ? st.headline.views : 0;
    const sort = st.sortedPages ? st.pageSort : 'views';
    const pageTotal = st.headline ? (METRIC[sort].total(st.headline) || 0) : 0;
    const filterText = st.filters.map(([d, v]) => `${d}: ${v}`).join(', ');
    const filteredTotal = st.filtered ? st.filtered.views : total;
    // Filtered by channel: the pages of that channel, by views, from the url × channel
    // cells; by another dimension, from a scan of the log (no sparklines: theirs are every
    // value's).
    const pagesScan = scanShown('top-pages');
    const fp = (st.filtered && st.filtered.pages) || pagesScan;
    st.top.pages = fp || st.sortedPages || st.viewPages;
    $('top-pages').dataset.sort = fp ? 'views' : sort;
    $('top-pages').dataset.filtered = String(!!fp);
    $('pages-filter').textContent = scanHint('top-pages', filterText) || (fp ? '· ' + filterText : '');
    if (pagesScan) st.changes['top-pages'] = st.scans['top-pages'].changes;
    if (fp) renderList('top-pages', fp, filteredTotal, false);
    else renderList('top-pages', st.top.pages, pageTotal, true, sort);
    for (const [id, items, hint] of [['top-refs', st.top.refs, 'refs-filter'], ['top-sites', st.top.sites, 'sites-filter']]) {
      const scanned = scanShown(id);
      if (scanned) st.changes[id] = st.scans[id].changes;
      $(id).dataset.filtered = String(!!scanned);
      $(hint).textContent = scanHint(id, filterText);
      renderList(id, scanned || items, scanned ? filteredTotal : total, false);
    }
    if (st.events) renderList('top-events', st.events, st.eventTotal, false, 'events');
  }

  // ---- lists no cell answers under a filter: a scan of the raw log -------------------------
  // Pages under a filter on anything but the channel (the url × channel cells answer that),
  // referrers and sites under any filter: POST /v1/query with "include": {"scan": true}, the
  // previous period with them for the changes. A scan reads every record of the range, so it
  // runs when the filters, the site or the range change and then at most once a minute (not at
  // every refresh) — and a long one no sooner than ten times its own length after it, so that
  // a 7-day view does not keep the server's cores reading; until it answers, the list shows
  // the unfiltered values and says so, and a scan whose filters went away is stopped (the
  // server stops it when the request goes).
  const SCAN_MIN_MS = 60000;
  const scanEvery = (s) => Math.max(SCAN_MIN_MS, s.meta ? 10000 * s.meta.seconds : 0);
  // Each scan: its dimension and metric. The engaged time tile's has no dimension.
  const SCANNED = {
    'top-pages': ['url', 'views'], 'top-refs': ['ref_domain', 'views'], 'top-sites': ['site', 'views'],
    't-engaged': [null, 'engaged_seconds'],
  };
  // What a heartbeat's own line says (its reader's): engaged time is known by these alone.
  const LINE_DIMS = ['device', 'browser', 'os', 'bot', 'country', 'region'];

  function needsScan(id) {
    if (!st.filters.length) return false;
    if (id === 't-engaged') return st.filters.every(([d]) => LINE_DIMS.includes(d));
    return id !== 'top-pages' || !st.filters.every(([d]) => d === 'channel');
  }

  const scanKey = () => JSON.stringify([st.site, st.range, st.filters]);

  // The scanned items to show in list `id` (the tile's scan itself), or null (no scan
  // needed, or none answered yet).
  function scanShown(id) {
    const s = st.scans[id];
    return needsScan(id) && s && s.key === scanKey() && s.items ? (SCANNED[id][0] ? s.items : s) : null;
  }

  // What the list's title says about its scan.
  function scanHint(id, filterText) {
    const s = st.scans[id];
    if (!needsScan(id) || !s || s.key !== scanKey()) return '';
    const time = new Date(s.at).toLocaleTimeString();
    $(id).dataset.scan = s.running ? 'running' : s.error ? 'error' : 'done';
    if (s.items) {
      return `· ${filterText} · from the log at ${time} (${nf.format(s.meta.records)} records in ${s.meta.seconds < 1 ? nf.format(Math.round(s.meta.seconds * 1000)) + ' ms' : nf1.format(s.meta.seconds) + ' s'})` +
        (s.running ? ', reading it again…' : '');
    }
    if (s.error) return `· not filtered: the log could not be read (${s.error})`;
    return '· not filtered yet: reading the log…';
  }

  function loadScans() {
    const key = scanKey();
    for (const [id, [dim, metric]] of Object.entries(SCANNED)) {
      const old = st.scans[id];
      if (!needsScan(id)) {
        if (old && old.abort) old.abort.abort();
        delete st.scans[id];
        delete $(id).dataset.scan;
        continue;
      }
      if (old && old.key === key && (old.running || Date.now() - old.at < scanEvery(old))) continue;
      if (old && old.running && old.abort) old.abort.abort();
      const same = old && old.key === key;
      const s = {
        key, at: Date.now(), running: true, abort: new AbortController(), error: null,
        items: same ? old.items : null, changes: same ? old.changes : new Map(),
        value: same ? old.value : null, prev: same ? old.prev : null,
        meta: same ? old.meta : null, range: [String(st.from), String(st.to)],
      };
      st.scans[id] = s;
      apiPost('/v1/query', {
        metrics: [metric], dimensions: dim ? [dim] : [], limit: 10, site: st.site || undefined,
        filters: st.filters.map(([d, v]) => ['is', d, [v]]), date_range: s.range,
        include: { scan: true, comparisons: 'previous_period' },
      }, s.abort.signal).then((r) => {
        // Without a dimension: one row, or none when nothing was counted (either period).
        const one = r.results[0];
        s.value = one ? one.metrics[0] : 0;
        s.prev = one && one.comparison ? one.comparison.metrics[0] : null;
        s.items = r.results.map((x) => ({ key: x.dimensions[0], views: x.metrics[0] }));
        s.changes = new Map(r.results.filter((x) => x.comparison).map((x) =>
          [x.dimensions[0], { change: x.comparison.change[0], prev: x.comparison.metrics[0] }]));
        s.meta = r.meta.scan;
      }).catch((e) => {
        if (e instanceof AuthError || e.name === 'AbortError') return;
        s.error = e.message;
      }).finally(() => {
        s.running = false;
        s.abort = null;
        s.at = Date.now();
        if (st.scans[id] === s) { renderLists(); renderHeadline(); }
      });
    }
    renderLists();
    renderHeadline();
  }

  // Per-page sparklines: one series per listed page, refreshed when the list or the range
  // changes, else at most every 15 s.
  // In the realtime view, snapshots arrive every few seconds: the lists at most every 5 s. A
  // snapshot inside those 5 s is not dropped but deferred to their end, so that the last
  // change is always shown (a snapshot comes only when the aggregates change).
  let dimsAt = 0;
  let dimsTimer = null;
  function loadDimsThrottled() {
    const wait = dimsAt + 5000 - Date.now();
    if (wait > 0) {
      if (!dimsTimer) {
        dimsTimer = setTimeout(() => {
          dimsTimer = null;
          const p = loadDimsThrottled();
          if (p) p.catch(report);
        }, wait);
      }
      return null;
    }
    dimsAt = Date.now();
    return loadDims();
  }

  async function loadSparks() {
    const r = RANGES[st.range];
    const key = [st.site, st.range, st.top.pages.map((p) => p.key).join('\n')].join('|');
    const now = Date.now();
    if (key === st.sparkKey && now - st.sparkAt < SPARK_MIN_MS) return;
    st.sparkKey = key;
    st.sparkAt = now;
    const gen = st.live.gen;
    const out = {};
    await Promise.all(st.top.pages.map(async (p) => {
      try {
        const s = await api('/v1/timeseries?' + q({ from: st.from, to: st.to, step: r.step, site: st.site, url: p.key }));
        out[p.key] = s.points.map((x) => x.views);
      } catch (e) {
        if (e instanceof AuthError) throw e;
      }
    }));
    if (gen !== st.live.gen) return;
    st.sparks = out;
    renderLists();
  }

  // The top pages by another metric than views: every metric of each, for the range shown.
  async function loadSortedPages() {
    const sort = st.pageSort;
    if (sort === 'views') { st.sortedPages = null; return; }
    const gen = st.live.gen;
    const r = await api('/v1/top?' + q({ from: st.from, to: st.to, site: st.site, dim: 'url', sort, limit: 10 }));
    if (gen !== st.live.gen || sort !== st.pageSort) return;
    st.sortedPages = r.items.map((it) => ({ key: it.key, views: it[sort], all: it }));
    renderLists();
  }

  // The change of the views of each of `keys` (values of `dim`, with `filters`) against the
  // previous period of the same length: POST /v1/query with `comparisons`, a Map key →
  // {change, prev}.
  async function changesFor(dim, keys, filters) {
    if (!keys.length) return new Map();
    let r;
    try {
      r = await apiPost('/v1/query', {
        metrics: ['views'], dimensions: [dim], site: st.site || undefined,
        filters: [...(filters || []), ['is', dim, keys]], limit: keys.length,
        date_range: [String(st.from), String(st.to)], include: { comparisons: 'previous_period' },
      });
    } catch (e) {
      if (e instanceof AuthError) throw e;
      return new Map(); // the numbers still show, without their change
    }
    return new Map(r.results.filter((x) => x.comparison).map((x) =>
      [x.dimensions[0], { change: x.comparison.change[0], prev: x.comparison.metrics[0] }]));
  }

  // Channels, devices and countries (`/v1/top?dim=`, bots left out), refreshed with the
  // sparklines; with filters, `POST /v1/query` of the pageviews that match them. Then every
  // list's changes against the previous period.
  const DIM_LISTS = { 'top-channels': 'channel', 'top-devices': 'device', 'top-countries': 'country' };
  async function loadDims() {
    const gen = st.live.gen;
    loadScans();
    const range = { from: st.from, to: st.to, site: st.site, limit: 10 };
    const filters = st.filters.map(([d, v]) => ['is', d, [v]]);
    const query = (body) => apiPost('/v1/query', {
      site: st.site || undefined, filters, date_range: [String(st.from), String(st.to)], ...body,
    });
    const lists = await Promise.all(Object.entries(DIM_LISTS).map(async ([id, dim]) => {
      if (!filters.length) return [id, (await api('/v1/top?' + q({ ...range, dim }))).items];
      const r = await query({ metrics: ['views'], dimensions: [dim], limit: 10 });
      return [id, r.results.map((x) => ({ key: x.dimensions[0], views: x.metrics[0] }))];
    }));
    // Custom events by name (no pageviews), with the filters on their own dimensions; the
    // list is not a filter (a pageview has no event name but `pageview`).
    const events = await apiPost('/v1/query', {
      metrics: ['events', 'conversion_rate'], dimensions: ['event'], limit: 10, site: st.site || undefined,
      filters: filters.concat([['is_not', 'event', ['pageview']]]),
      date_range: [String(st.from), String(st.to)],
    }).catch((e) => {
      if (e instanceof AuthError) throw e;
      return { results: [] };
    });
    // Each with its conversion rate: the share of the range's visitors (under the filters)
    // who sent it.
    st.events = events.results.map((x) => ({ key: x.dimensions[0], views: x.metrics[0], rate: x.metrics[1] }));
    st.eventTotal = st.events.reduce((a, x) => a + x.views, 0);
    // Current visitors under the filters: the minutes of the live stream's last
    // "current visitors" (its window's last five).
    if (filters.length && st.liveTo != null) {
      const range = [String(st.liveTo - CURRENT_MINUTES * 60), String(st.liveTo)];
      const key = JSON.stringify([st.site, st.filters]);
      const r = await query({ metrics: ['visitors'], date_range: range }).catch((e) => {
        if (e instanceof AuthError) throw e;
        return null;
      });
      if (r && gen === st.live.gen) {
        st.currentFiltered = { key, range, visitors: r.results.length ? r.results[0].metrics[0] : 0 };
      }
    }
    const step = RANGES[st.range].stepMin === 1 ? 'time:minute' : 'time:hour';
    // Pages by channel have cells of their own (url × channel); by device or country they
    // have none, and stay unfiltered.
    const byChannel = filters.length > 0 && st.filters.every(([d]) => d === 'channel');
    const [sum, series, pages] = filters.length
      ? await Promise.all([
        // Visits by the values of their entry pageview.
        query({
          metrics: ['views', 'visitors', 'visits', 'bounce_rate', 'visit_duration'],
          include: { comparisons: 'previous_period' },
        }),
        query({ metrics: ['views', 'visitors'], dimensions: [step], limit: 1000 }),
        // (Refused when agg.url_channels is off: the pages stay unfiltered.)
        byChannel ? query({ metrics: ['views'], dimensions: ['url'], limit: 10 }).catch((e) => {
          if (e instanceof AuthError) throw e;
          return null;
        }) : null,
      ])
      : [null, null, null];
    if (gen !== st.live.gen) return;
    let total = st.headline ? st.headline.views : 0;
    st.filtered = null;
    if (sum) {
      const row = sum.results[0] || { metrics: [0, 0, 0, null, null] };
      total = row.metrics[0];
      const prev = row.comparison ? row.comparison.metrics : null;
      st.filtered = {
        views: row.metrics[0],
        visitors: row.metrics[1],
        visits: row.metrics[2],
        bounceRate: row.metrics[3],
        visitDuration: row.metrics[4],
        prevViews: prev ? prev[0] : null,
        prevVisitors: prev ? prev[1] : null,
        prev,
        points: new Map(series.results.map((r) => {
          const t = r.dimensions[0];
          return [secs(t), { t, views: r.metrics[0], uniques: r.metrics[1] }];
        })),
        pages: pages ? pages.results.map((x) => ({ key: x.dimensions[0], views: x.metrics[0] })) : null,
      };
      const change = (i) => {
        const c = row.comparison && row.comparison.change[i];
        return c == null ? '' : ` (${c > 0 ? '+' : ''}${nf1.format(c)} % vs previous period)`;
      };
      const sumEl = $('filter-sum');
      sumEl.dataset.views = String(row.metrics[0]);
      sumEl.dataset.visitors = String(row.metrics[1]);
      sumEl.textContent = `${nf.format(row.metrics[0])} views${change(0)}, ${nf.format(row.metrics[1])} visitors${change(1)}`;
    }
    renderHeadline();
    renderChart();
    const keys = (items) => items.map((it) => it.key);
    // A list a scan of the log has answered shows that scan's changes: the unfiltered
    // values' are not asked for.
    const unfiltered = (id, dim, items) =>
      scanShown(id) ? null : changesFor(dim, keys(items), []).then((m) => [id, m]);
    const changes = (await Promise.all([
      ...lists.map(([id, items]) => changesFor(DIM_LISTS[id], keys(items), filters).then((m) => [id, m])),
      st.filtered && st.filtered.pages
        ? changesFor('url', keys(st.filtered.pages), filters).then((m) => ['top-pages', m])
        : unfiltered('top-pages', 'url', st.viewPages),
      unfiltered('top-refs', 'ref_domain', st.top.refs),
      unfiltered('top-sites', 'site', st.top.sites),
    ])).filter(Boolean);
    if (gen !== st.live.gen) return;
    st.changes = Object.fromEntries(changes);
    for (const [id, items] of lists) {
      renderList(id, items, total, false);
      $(id).dataset.filter = DIM_LISTS[id];
      for (const li of $(id).querySelectorAll('li:not(.empty)')) li.tabIndex = 0;
    }
    renderLists();
  }

  // A click (or Enter) on a row of a dimension card filters by its value; a chip removes it.
  function renderFilters() {
    const bar = $('filterbar');
    bar.hidden = st.filters.length === 0;
    const chips = $('filter-chips');
    chips.replaceChildren();
    for (const [d, v] of st.filters) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'chip';
      b.dataset.dim = d;
      b.dataset.value = v;
      b.textContent = `${d}: ${v} ✕`;
      b.setAttribute('aria-label', `remove the filter ${d} is ${v}`);
      b.addEventListener('click', () => {
        st.filters = st.filters.filter(([x, y]) => !(x === d && y === v));
        renderFilters();
        loadDims().catch(report);
      });
      chips.appendChild(b);
    }
    if (!st.filters.length) $('filter-sum').textContent = '';
  }
  for (const id of Object.keys(DIM_LISTS)) {
    const pick = (ev) => {
      const li = ev.target.closest('li');
      if (!li || li.classList.contains('empty') || !li.dataset.key) return;
      const dim = DIM_LISTS[id];
      // One value per dimension: a second click on the same dimension replaces it.
      st.filters = st.filters.filter(([d]) => d !== dim).concat([[dim, li.dataset.key]]);
      renderFilters();
      loadDims().catch(report);
    };
    $(id).addEventListener('click', pick);
    $(id).addEventListener('keydown', (ev) => { if (ev.key === 'Enter') pick(ev); });
  }

  for (const group of document.querySelectorAll('[data-dim]')) {
    group.addEventListener('click', () => {
      const ol = group.closest('section').querySelector('ol');
      DIM_LISTS[ol.id] = group.dataset.dim;
      for (const o of group.parentElement.querySelectorAll('button')) {
        o.setAttribute('aria-pressed', String(o === group));
      }
      loadDims().catch(report);
    });
  }

  for (const b of document.querySelectorAll('.sort button[data-sort]')) {
    b.addEventListener('click', () => {
      st.pageSort = b.dataset.sort;
      for (const o of document.querySelectorAll('.sort button[data-sort]')) {
        o.setAttribute('aria-pressed', String(o === b));
      }
      // The list by views until the new order arrives (never the previous order's list under
      // the new button: its data-sort says which order is shown).
      st.sortedPages = null;
      renderLists();
      loadSortedPages().then(loadSparks).catch(report);
    });
  }

  function mergeSites(items) {
    // Keep every site seen in the selector, so that one can be chosen while quiet.
    const sel = $('site');
    const have = new Set([...sel.options].map((o) => o.value));
    for (const it of items) {
      if (!have.has(it.key)) {
        const o = document.createElement('option');
        o.value = it.key;
        o.textContent = it.key;
        sel.appendChild(o);
      }
    }
  }

  // ---- data: realtime from the stream, longer ranges from the query API --------------------
  function applySnapshot(s) {
    st.live.snapshots++;
    if (s.current_visitors != null) {
      st.current = s.current_visitors;
      st.liveTo = secs(s.to);
      renderCurrent();
    }
    mergeSites(s.top_sites || []);
    if (!RANGES[st.range].live) { scheduleRefresh(); return; }
    st.from = secs(s.from);
    st.to = secs(s.to);
    st.headline = s;
    st.points = s.points;
    st.top = { pages: s.top_urls, refs: s.top_ref_domains, sites: s.top_sites };
    st.viewPages = s.top_urls;
    renderHeadline();
    renderChart();
    renderLists();
    document.body.dataset.ready = 'true';
    loadSortedPages().then(loadPrevious).then(loadSparks).then(loadDimsThrottled).catch(report);
  }

  // At most one refresh in flight and one timer pending, however many snapshots arrive.
  let refreshTimer = null;
  function scheduleRefresh() {
    if (st.refreshing) { st.refreshAgain = true; return; }
    if (refreshTimer) return;
    const wait = st.lastRefresh + REFRESH_MIN_MS - Date.now();
    if (wait > 0) {
      refreshTimer = setTimeout(() => { refreshTimer = null; scheduleRefresh(); }, wait);
      return;
    }
    refresh().catch(report);
  }

  async function refresh() {
    const r = RANGES[st.range];
    if (r.live || st.off) return; // the stream drives it, or there is nothing to show
    const gen = st.live.gen;
    st.refreshing = true;
    st.lastRefresh = Date.now();
    try {
      const series = await api('/v1/timeseries?' + q({ from: '-' + r.minutes + 'm', to: 'now', step: r.step, site: st.site }));
      const from = secs(series.from), to = secs(series.to);
      const range = { from, to, site: st.site };
      const [sum, refs, sites] = await Promise.all([
        api('/v1/summary?' + q(range)),
        api('/v1/top?' + q({ ...range, dim: 'ref_domain', limit: 10 })),
        api('/v1/top?' + q({ ...range, dim: 'site', limit: 10 })),
      ]);
      if (gen !== st.live.gen) return; // the view changed meanwhile: this answer is stale
      st.from = from;
      st.to = to;
      st.points = series.points;
      st.headline = { ...sum, current_visitors: null };
      st.top = { pages: sum.top_urls, refs: refs.items, sites: sites.items };
      st.viewPages = sum.top_urls;
      mergeSites(sites.items);
      renderHeadline();
      renderChart();
      renderLists();
      document.body.dataset.ready = 'true';
      await loadSortedPages();
      await loadPrevious();
      await loadSparks();
      await loadDims();
    } finally {
      st.refreshing = false;
      if (st.refreshAgain) { st.refreshAgain = false; scheduleRefresh(); }
    }
  }

  // ---- health strip ------------------------------------------------------------------------
  function applyHealth(h) {
    const prev = st.live.lastHealth;
    st.live.lastHealth = h;
    $('h-shards').textContent = nf.format(h.shards) + (h.ready ? '' : ' (not ready)');
    $('h-lag').textContent = nf.format(h.pending_events) + ' events not yet on disk';
    $('h-live').textContent = nf.format(h.live_clients);
    const px = h.pixel || { overload: '?', waited_total: 0, dropped_total: 0 };
    $('h-pixel').textContent = px.overload;
    if (!prev || h.t_ms <= prev.t_ms) return;
    const dt = (h.t_ms - prev.t_ms) / 1000;
    const rate = (a, b) => Math.max(0, (a - b) / dt);
    $('h-in').textContent = nf1.format(rate(h.received_events_total, prev.received_events_total)) + ' /s';
    $('h-bots').textContent = nf1.format(rate(h.bot_hits_total || 0, prev.bot_hits_total || 0)) + ' /s, left out';
    const drops = Object.keys(h.dropped_events_total)
      .map((k) => [k, rate(h.dropped_events_total[k], prev.dropped_events_total[k] || 0)])
      .filter(([, v]) => v > 0);
    const kernel = rate(h.udp_kernel_drops_total, prev.udp_kernel_drops_total);
    if (kernel > 0) drops.push(['udp_kernel', kernel]);
    const dd = $('h-dropped');
    dd.textContent = drops.length ? drops.map(([k, v]) => `${k} ${nf1.format(v)} /s`).join(', ') : '0 /s';
    dd.dataset.bad = drops.length ? 'true' : '';
    // The pixel's choice under a full log queue, and what it cost in the last interval.
    const pp = prev.pixel || px;
    const waited = rate(px.waited_total, pp.waited_total);
    const lost = rate(px.dropped_total, pp.dropped_total);
    const hp = $('h-pixel');
    hp.textContent = px.overload + (waited > 0 ? `, ${nf1.format(waited)} /s waited` : '') +
      (lost > 0 ? `, ${nf1.format(lost)} /s dropped` : '');
    hp.dataset.bad = lost > 0 ? 'true' : '';
  }

  // ---- the live stream (SSE over fetch) ----------------------------------------------------
  function handleBlock(block) {
    let ev = 'message', data = [], id = null;
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') ev = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
      else if (field === 'retry' && /^\d+$/.test(value)) st.live.retry = Number(value);
    }
    if (id != null) st.live.lastId = id;
    if (!data.length) return;
    st.live.events++;
    let msg;
    try { msg = JSON.parse(data.join('\n')); } catch { return; }
    if (ev === 'snapshot') applySnapshot(msg);
    else if (ev === 'health') applyHealth(msg);
    else if (ev === 'error') status('live: ' + msg.error, 'warn');
    else if (ev === 'aggregation_off') showOff(msg.error);
  }

  async function liveLoop(gen) {
    const L = st.live;
    while (gen === L.gen) {
      const ctrl = new AbortController();
      L.abort = ctrl;
      let stall = null;
      const arm = () => { clearTimeout(stall); stall = setTimeout(() => ctrl.abort(), STALL_MS); };
      try {
        const h = headers();
        if (L.lastId) h['Last-Event-ID'] = L.lastId;
        const minutes = RANGES[st.range].live ? RANGES[st.range].minutes : 5;
        arm();
        const r = await fetch('/v1/live?' + q({ minutes, site: st.site }), { headers: h, signal: ctrl.signal, cache: 'no-store' });
        if (r.status === 401) { clearTimeout(stall); askToken(); return; }
        if (!r.ok || !r.body) {
          const body = await r.json().catch(() => ({}));
          throw new Error(body.error || ('HTTP ' + r.status));
        }
        if (!st.off) status('live', 'ok');
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (gen === L.gen) handleBlock(block);
          }
        }
      } catch (e) {
        if (gen !== L.gen) return;
        status('reconnecting… (' + (e.name === 'AbortError' ? 'stream stalled' : e.message) + ')', 'warn');
      } finally {
        clearTimeout(stall);
      }
      if (gen !== L.gen) return;
      await new Promise((res) => setTimeout(res, L.retry));
    }
  }

  function report(e) {
    if (e instanceof AuthError || e instanceof OffError) return;
    status('error: ' + e.message, 'warn');
  }

  // A new view: forget what belongs to the old one, restart the stream.
  function restart() {
    const L = st.live;
    L.gen++;
    if (L.abort) L.abort.abort();
    L.lastId = null;
    st.prevKey = '';
    st.prev = null;
    st.sparkKey = '';
    st.sparks = {};
    st.lastRefresh = 0;
    delete document.body.dataset.ready;
    status('connecting…', '');
    liveLoop(L.gen);
    if (!RANGES[st.range].live) refresh().catch(report);
  }

  $('site').addEventListener('change', (e) => { st.site = e.target.value; restart(); });
  for (const r of document.querySelectorAll('input[name=range]')) {
    r.addEventListener('change', (e) => { if (e.target.checked) { st.range = e.target.value; restart(); } });
  }

  // The site list starts from the last week's top sites; the stream adds new ones.
  api('/v1/top?' + q({ dim: 'site', from: '-7d', limit: 100 }))
    .catch((e) => { if (e instanceof AuthError || e instanceof OffError) throw e; return api('/v1/top?' + q({ dim: 'site', from: '-1h', limit: 100 })); })
    .then((t) => mergeSites(t.items)).catch(report);
  restart();
})();
