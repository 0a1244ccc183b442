// p1gw live page: plain ES2020, no dependencies, works offline. Reads /api/v1/reading, the SSE
// stream /api/v1/events, /api/v1/status (5 s) and /api/v1/history?minutes=60 (once); polls while SSE is down.
'use strict';
(() => {
const $ = (id) => document.getElementById(id);
// With [http] token_file set, open the page as /?access_token=TOKEN: the API calls carry it
// (EventSource cannot send an Authorization header).
const TOKEN = new URLSearchParams(location.search).get('access_token');
const api = (path) => (TOKEN ? path + (path.includes('?') ? '&' : '?') + 'access_token=' + encodeURIComponent(TOKEN) : path);
const HOUR = 3600e3;
const S = {
  n: 0,          // readings rendered, mirrored in body[data-updated]
  reading: null, status: null,
  pts: [],       // chart points {t, power_import, power_export, hot_water_flow}, oldest first
  offset: 0,     // server clock minus browser clock (ms), from SSE readings
  ageBase: null, ageAt: 0, // telegram age (s) as of performance.now() == ageAt
  es: null, esDelay: 2000, poll: 0,
  base: null,    // "today" baseline {day, t, e}
  cb: null,      // last drawn chart, for the hover read-out
};

// ---- values and units
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
function num(o) {
  let v = o && o.value;
  if (typeof v === 'string' && v.trim() !== '') v = +v;
  return isNum(v) ? v : null;
}
const unit = (o) => String((o && o.unit) || '').toLowerCase();
// kW / kWh: W and Wh are divided by 1000.
function kilo(o) {
  const v = num(o), u = unit(o);
  return v === null ? null : u === 'w' || u === 'wh' ? v / 1000 : u === 'mw' || u === 'mwh' ? v * 1000 : v;
}
// V / A: kV and kA are multiplied by 1000.
function base(o) {
  const v = num(o), u = unit(o);
  return v !== null && (u === 'kv' || u === 'ka') ? v * 1000 : v;
}
function index(r) {
  const m = Object.create(null);
  for (const o of (r && r.objects) || []) if (o && o.name && !(o.name in m) && o.value != null) m[o.name] = o;
  return m;
}
function total(m, dir) { // *_total, else the sum of the tariff registers
  const t = kilo(m['energy_' + dir + '_total']);
  if (t !== null) return t;
  let s = null;
  for (const i of [1, 2, 3, 4]) { const v = kilo(m['energy_' + dir + '_tariff' + i]); if (v !== null) s = (s || 0) + v; }
  return s;
}

// ---- formatting
const fx = (v, d) => (isNum(v) ? v.toFixed(d) : '—');
const pw = (kw) => (!isNum(kw) ? ['—', ''] : Math.abs(kw) < 1 ? [String(Math.round(Math.abs(kw) * 1000)), 'W'] : [Math.abs(kw).toFixed(2), 'kW']);
const pwStr = (kw) => pw(kw).join(' ').trim();
const pad = (n) => String(n).padStart(2, '0');
const hhmm = (d) => pad(d.getHours()) + ':' + pad(d.getMinutes());
const dayKey = (d) => d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
function ago(s) {
  s = Math.max(0, Math.floor(s));
  return s < 60 ? s + ' s' : s < 3600 ? Math.floor(s / 60) + ' min ' + (s % 60) + ' s' : Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
const show = (id, on) => { const e = $(id); if (e) e.hidden = !on; };
// A value into its <data> element (text + unit, machine value in @value); hides "row-<id>" when absent.
function put(id, v, text, u) {
  const e = $(id);
  e.replaceChildren(v === null ? '—' : text, el('span', 'u', u ? ' ' + u : ''));
  if (v === null) e.removeAttribute('value'); else e.setAttribute('value', String(v));
  show('row-' + id, v !== null);
  return v !== null;
}

// ---- a reading
function render(r) {
  S.reading = r;
  const m = index(r), g = (n) => kilo(m[n]);
  $('meter-name').textContent = r.meter || 'meter';
  $('meter-header').textContent = r.header || '';
  $('meter-id').textContent = r.meter_id ? 'id ' + r.meter_id : '';
  $('meter-crc').textContent = r.crc ? 'CRC ' + r.crc : '';
  const mt = $('meter-time'), d = new Date(r.meter_time || NaN);
  mt.textContent = isNaN(d) ? '—' : dayKey(d) + ' ' + hhmm(d) + ':' + pad(d.getSeconds());
  if (isNaN(d)) mt.removeAttribute('datetime'); else mt.setAttribute('datetime', r.meter_time);

  const pi = g('power_import'), pe = g('power_export');
  show('sec-power', put('power-import', pi, ...pw(pi)) | put('power-export', pe, ...pw(pe)));
  $('sec-power').classList.toggle('exporting', pe > 0 && !(pi > 0));

  const ei = total(m, 'import'), ee = total(m, 'export'), t = pointTime(r);
  show('sec-energy', put('energy-import', ei, fx(ei, 1), 'kWh') | put('energy-export', ee, fx(ee, 1), 'kWh'));
  if (ei !== null) offerBase(t, ei);
  const b = S.base, td = b && ei !== null && b.day === dayKey(new Date(t)) ? ei - b.e : null;
  put('energy-today', td === null ? null : +td.toFixed(3), fx(td, 2), 'kWh');
  $('energy-today-since').textContent = td === null ? '' : b.t - new Date(b.t).setHours(0, 0, 0, 0) > 15 * 60e3 ? 'since ' + hhmm(new Date(b.t)) : 'since midnight';

  // Hot water: Veitur's submeter on channel 1
  const vol = num(m.hot_water_volume), fl = num(m.heat_flow), ts = num(m.heat_supply_temperature), tr = num(m.heat_return_temperature);
  const lpm = fl === null ? null : +((fl * 1000) / 60).toFixed(2), dt = ts !== null && tr !== null ? +(ts - tr).toFixed(1) : null;
  put('hot-water-volume', vol, fx(vol, 3), 'm³');
  put('heat-flow', fl, fx(fl, 3), 'm³/h');
  put('heat-flow-lpm', lpm, fx(lpm, 1), 'L/min');
  show('temps', put('supply-temp', ts, fx(ts, 1), '°C') | put('return-temp', tr, fx(tr, 1), '°C'));
  put('temp-diff', dt, fx(dt, 1), '°C');
  show('sec-water', vol !== null || fl !== null || ts !== null || tr !== null);

  let anyPh = false;
  const cols = { v: 0, a: 0, p: 0 };
  for (const l of [1, 2, 3]) {
    const v = base(m['voltage_l' + l]), a = base(m['current_l' + l]);
    const ip = g('power_import_l' + l), ep = g('power_export_l' + l);
    const net = ip === null && ep === null ? null : (ip || 0) - (ep || 0);
    cols.v |= put('voltage-l' + l, v, fx(v, 1), 'V');
    cols.a |= put('current-l' + l, a, Number.isInteger(a) ? String(a) : fx(a, 1), 'A');
    cols.p |= put('power-l' + l, net, (net < 0 ? '−' : '') + pw(net)[0], pw(net)[1]);
    $('power-l' + l).classList.toggle('neg', net < 0);
    const has = v !== null || a !== null || net !== null;
    show('row-l' + l, has);
    anyPh = anyPh || has;
  }
  for (const c in cols) $('phase-table').classList.toggle('no-' + c, !cols[c]);
  show('sec-phases', anyPh);

  // Gas, cold water, and heat only when in a real energy unit (Veitur's "Wh" register is unverified)
  const gas = num(m.gas_volume), wat = num(m.water_volume), heU = (m.heat_energy && m.heat_energy.unit) || '';
  const he = /^(gj|mwh|kwh)$/i.test(heU) ? num(m.heat_energy) : null;
  show('sec-other', put('gas-volume', gas, fx(gas, 3), 'm³') | put('water-volume', wat, fx(wat, 3), 'm³') | put('heat-energy', he, fx(he, 3), heU));

  show('waiting', false);
  show('sec-chart', true);
  document.title = (pi !== null ? pwStr(pi) + ' · ' : '') + (r.meter || 'p1gw') + ' · p1gw';
  document.body.dataset.updated = String(++S.n);
}

// ---- "today": import since the first total seen after local midnight (kept in localStorage)
function offerBase(t, e) {
  if (!isNum(t) || !isNum(e)) return;
  const day = dayKey(new Date(t)), key = 'p1gw.today.' + ((S.reading && S.reading.meter) || '');
  if (!S.base || S.base.day !== day) try { S.base = JSON.parse(localStorage.getItem(key)); } catch (_) { S.base = null; }
  const b = S.base;
  if (!b || b.day !== day || t < b.t || e < b.e) {
    S.base = { day, t, e };
    try { localStorage.setItem(key, JSON.stringify(S.base)); } catch (_) { /* storage off */ }
  }
}

// ---- chart points
function pointTime(r) {
  const t = Date.parse(r.received_at || r.meter_time || '');
  return isNaN(t) ? Date.now() + S.offset : t;
}
function addPoint(p) {
  const last = S.pts[S.pts.length - 1];
  if (last && p.t <= last.t) return;
  S.pts.push(p);
  while (S.pts[0].t < p.t - HOUR - 120e3) S.pts.shift();
  schedule();
}
const nn = (v) => (isNum(v) ? v : null);
async function loadHistory() {
  try {
    const res = await fetch(api('/api/v1/history?minutes=60'), { cache: 'no-store' });
    if (!res.ok) return;
    const hist = [];
    for (const q of (await res.json()).points || []) {
      const t = Date.parse(q.t);
      if (isNaN(t)) continue;
      hist.push({ t, power_import: nn(q.power_import), power_export: nn(q.power_export), hot_water_flow: nn(q.hot_water_flow) });
      offerBase(t, q.energy_import_total);
    }
    hist.sort((a, b) => a.t - b.t);
    const lt = hist.length ? hist[hist.length - 1].t : -Infinity;
    S.pts = hist.concat(S.pts.filter((p) => p.t > lt));
    if (S.reading) render(S.reading);
    schedule();
  } catch (_) { /* no history: the chart fills from live readings */ }
}

// ---- live data
function onReading(r, live) {
  if (!r || typeof r !== 'object') return;
  if (live) {
    const t = Date.parse(r.received_at || '');
    if (!isNaN(t)) S.offset = t - Date.now();
    S.ageBase = 0;
    S.ageAt = performance.now();
  } else if (S.ageBase === null || !S.status) {
    S.ageBase = Math.max(0, (Date.now() + S.offset - pointTime(r)) / 1000);
    S.ageAt = performance.now();
  }
  const m = index(r);
  addPoint({ t: pointTime(r), power_import: kilo(m.power_import), power_export: kilo(m.power_export), hot_water_flow: num(m.heat_flow) });
  render(r);
  tick();
  fetchValues();
}
// Every value the meter sends, through the meter's code table (names, units and scales of
// [meter.codes] rules; codes nobody named as obis_…): /api/v1/values.
async function fetchValues() {
  try {
    const res = await fetch(api('/api/v1/values'), { cache: 'no-store' });
    if (res.ok) renderValues(await res.json());
  } catch (_) { /* the next reading tries again */ }
}
function renderValues(v) {
  const body = $('values');
  if (!body || !v || !Array.isArray(v.values)) return;
  const rows = [];
  let unnamed = false;
  for (const x of v.values) {
    const tr = el('tr');
    tr.append(el('th', x.named ? '' : 'unnamed', x.name));
    tr.lastChild.setAttribute('scope', 'row');
    const val = String(x.value);
    tr.append(el('td', typeof x.value === 'number' ? 'num' : 'txt', x.unit ? val + ' ' + x.unit : val));
    tr.append(el('td', 'code', x.obis));
    if (!x.named) unnamed = true;
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  show('sec-values', rows.length > 0);
  show('values-note', unnamed);
}
async function fetchReading() {
  try {
    const res = await fetch(api('/api/v1/reading'), { cache: 'no-store' });
    if (res.ok) onReading(await res.json(), false);
  } catch (_) { /* server away */ }
}
function setConn(state, text) {
  $('conn').dataset.state = state;
  $('conn-text').textContent = text;
}
// ?poll or ?poll=N: no SSE, poll every N s (proxies that break SSE; headless tests with virtual time)
const POLL = new URLSearchParams(location.search).get('poll');
function startPolling() {
  if (S.poll) return;
  fetchReading();
  S.poll = setInterval(fetchReading, Math.max(1, +POLL || 10) * 1000);
}
function connect() {
  if (POLL !== null || !window.EventSource) { setConn('poll', 'polling'); startPolling(); return; }
  const es = (S.es = new EventSource(api('/api/v1/events')));
  const on = (ev) => { try { onReading(JSON.parse(ev.data), true); } catch (_) { /* not JSON */ } };
  es.addEventListener('reading', on);
  es.onmessage = on;
  es.onopen = () => { S.esDelay = 2000; setConn('live', 'live'); clearInterval(S.poll); S.poll = 0; };
  es.onerror = () => {
    setConn('retry', 'reconnecting…');
    startPolling();
    if (es.readyState === 2) { // closed for good (e.g. HTTP error): open a new one later
      S.es = null;
      setTimeout(connect, S.esDelay);
      S.esDelay = Math.min(S.esDelay * 2, 30000);
    }
  };
}

// ---- status, every 5 s
function meterStatus() {
  const ms = (S.status && S.status.meters) || [];
  return ms.find((x) => x.name === (S.reading && S.reading.meter)) || ms[0] || null;
}
const interval = () => { const ms = meterStatus(); return ms && isNum(ms.expected_interval_s) ? ms.expected_interval_s : 10; };
async function fetchStatus() {
  try {
    S.status = await (await fetch(api('/api/v1/status'), { cache: 'no-store' })).json();
    const ms = meterStatus();
    if (ms && isNum(ms.last_telegram_age_s)) { S.ageBase = ms.last_telegram_age_s; S.ageAt = performance.now(); }
    renderStatus();
  } catch (_) {
    S.status = null;
    if (!S.es || S.es.readyState !== 1) setConn('retry', 'reconnecting…');
  }
  tick();
}
function stateClass(s) {
  s = String(s || '').toLowerCase();
  return /^(ok|up|delivering|connected|sending|idle|ready)$/.test(s) ? 'ok'
    : /error|fail|down|dead|disconnect|unreachable|full|drop/.test(s) ? 'bad'
    : /spool|retry|backoff|connecting|degraded|lag|pending|start|throttl|budget/.test(s) ? 'warn' : '';
}
function stat(k, v, cls) {
  const d = el('div', cls);
  d.append(el('dt', '', k), el('dd', '', v == null ? '—' : String(v)));
  return d;
}
function renderStatus() {
  const st = S.status || {}, ms = meterStatus();
  $('version').textContent = st.version ? 'v' + st.version : '';
  $('telegrams').textContent = ms ? 'telegrams ok ' + (ms.telegrams_ok ?? '—') + ' · rejected ' + (ms.telegrams_rejected ?? '—') + (ms.readings_rejected ? ' · held back ' + ms.readings_rejected : '') : '';
  const sinks = Array.isArray(st.sinks) ? st.sinks : [];
  $('sinks').replaceChildren(...sinks.map((s) => {
    const li = el('li', 'sink'), dl = el('dl', 'sstats');
    li.dataset.sink = s.name || '';
    li.dataset.state = s.state || '';
    li.append(el('span', 'sname', s.name || s.kind || 'sink'));
    if (s.kind && s.kind !== s.name) li.append(el('span', 'skind', s.kind));
    dl.append(stat('Spooled', s.spool_depth, s.spool_depth > 0 ? 'warn' : ''), stat('Sent', s.sent), stat('Failed', s.failed, s.failed > 0 ? 'bad' : ''));
    li.append(el('span', 'badge ' + stateClass(s.state), s.state || 'unknown'), dl);
    if (s.last_error) {
      const p = el('p', 'serr', String(s.last_error));
      p.title = p.textContent;
      li.append(p);
    }
    return li;
  }));
  show('sec-sinks', sinks.length > 0);
  const rs = (st.reasons || []).map((x) => (typeof x === 'string' ? x : (x && (x.reason || x.message)) || JSON.stringify(x)));
  $('banner').textContent = 'Not ready' + (rs.length ? ': ' + rs.join('; ') : '');
  show('banner', st.ready === false);
}

// ---- telegram age, every second: amber past 3x the interval, red when not ready
function tick() {
  const box = $('age-box'), out = $('telegram-age');
  if (S.ageBase === null) return;
  const age = S.ageBase + (performance.now() - S.ageAt) / 1000;
  out.textContent = ago(age) + ' ago';
  out.dataset.seconds = age.toFixed(1);
  box.dataset.level = S.status && S.status.ready === false ? 'bad' : age > 3 * interval() ? 'warn' : 'ok';
}

// ---- charts: inline SVG
let pending = 0;
function schedule() {
  if (!pending) pending = requestAnimationFrame(() => { pending = 0; drawChart(); drawSpark(); });
}
function chartEnd() {
  const last = S.pts[S.pts.length - 1];
  return Math.max(Date.now() + S.offset, last ? last.t : 0);
}
function niceStep(range, n) {
  const raw = range / n, mag = 10 ** Math.floor(Math.log10(raw)), f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
}
// Averages into clock-aligned time buckets, so the picture does not shimmer as the window slides.
function buckets(keys, start, bw) {
  const map = new Map();
  for (const p of S.pts) {
    if (p.t < start - bw) continue;
    const k = Math.floor(p.t / bw);
    let b = map.get(k);
    if (!b) map.set(k, (b = { t: (k + 0.5) * bw, n: {}, s: {} }));
    for (const key of keys) if (isNum(p[key])) { b.s[key] = (b.s[key] || 0) + p[key]; b.n[key] = (b.n[key] || 0) + 1; }
  }
  const out = [...map.values()].sort((a, b) => a.t - b.t);
  for (const b of out) for (const key of keys) b[key] = b.n[key] ? b.s[key] / b.n[key] : null;
  return out;
}
const gapMs = (bw) => Math.max(3 * interval() * 1000 + 1000, 2.5 * bw);
// Line and area path data; breaks at gaps; sparse: leaves out runs of zeros (export is mostly zero).
function paths(bs, key, x, y, y0, gap, sparse) {
  let line = '', area = '', seg = [], prev = null;
  const f = (n) => n.toFixed(1);
  const flush = () => {
    if (!seg.length) return;
    if (seg.length === 1) seg.push([seg[0][0] + 1.5, seg[0][1]]);
    const d = seg.map((q, i) => (i ? 'L' : 'M') + f(q[0]) + ' ' + f(q[1])).join('');
    line += d;
    area += d + 'L' + f(seg[seg.length - 1][0]) + ' ' + y0 + 'L' + f(seg[0][0]) + ' ' + y0 + 'Z';
    seg = [];
  };
  const nz = (b) => b && b[key] > 0;
  bs.forEach((b, i) => {
    const v = b[key];
    if (v === null) return;
    if (sparse && !(v > 0 || nz(bs[i - 1]) || nz(bs[i + 1]))) { flush(); prev = null; return; }
    if (prev !== null && b.t - prev > gap) flush();
    seg.push([x(b.t), y(v)]);
    prev = b.t;
  });
  flush();
  return { line, area };
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function size(svg, w, h) {
  const r = svg.getBoundingClientRect(), W = Math.max(w, Math.round(r.width)), H = Math.max(h, Math.round(r.height));
  svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  return [W, H];
}
function drawChart() {
  const svg = $('chart');
  if ($('sec-chart').hidden) return;
  const [W, H] = size(svg, 200, 120), narrow = W < 460;
  const L = narrow ? 46 : 54, R = 8, T = 10, B = 24, cw = W - L - R, ch = H - T - B;
  const end = chartEnd(), start = end - HOUR;
  const bw = Math.max(10e3, Math.ceil(HOUR / (cw / 2.5) / 5e3) * 5e3);
  const bs = buckets(['power_import', 'power_export'], start, bw).filter((b) => b.t >= start);
  let maxI = 0, maxE = 0;
  for (const b of bs) { maxI = Math.max(maxI, b.power_import || 0); maxE = Math.max(maxE, b.power_export || 0); }
  const hasE = maxE > 0.0005;
  const step = niceStep(Math.max(maxI, 0.1) + (hasE ? maxE : 0), narrow ? 3 : 5);
  const top = Math.max(step, Math.ceil(maxI / step) * step), bot = hasE ? -Math.ceil(maxE / step) * step : 0;
  const x = (t) => L + ((t - start) / HOUR) * cw, y = (v) => T + ((top - v) / (top - bot)) * ch;
  const kw = Math.max(top, -bot) >= 1;
  const grid = svgEl('g', { class: 'grid' });
  for (let v = bot; v <= top + step / 2; v += step) {
    const yy = y(v).toFixed(1), a = Math.abs(v), zero = a < step / 2;
    grid.append(svgEl('line', { x1: L, x2: W - R, y1: yy, y2: yy, class: zero ? 'zero' : '' }),
      svgEl('text', { x: L - 6, y: yy, 'text-anchor': 'end', 'dominant-baseline': 'middle' }, zero ? '0' : kw ? +a.toFixed(2) + ' kW' : Math.round(a * 1000) + ' W'));
  }
  const every = (narrow ? 20 : 10) * 60e3;
  for (let t = Math.ceil(start / every) * every; t <= end; t += every) {
    const xx = x(t);
    grid.append(svgEl('line', { x1: xx.toFixed(1), x2: xx.toFixed(1), y1: T, y2: H - B }));
    if (xx > L + 14 && xx < W - R - 14) grid.append(svgEl('text', { x: xx.toFixed(1), y: H - 6, 'text-anchor': 'middle' }, hhmm(new Date(t))));
  }
  const kids = [$('chart-title'), $('chart-desc'), grid], gap = gapMs(bw), y0 = y(0).toFixed(1);
  if (hasE) {
    const p = paths(bs, 'power_export', x, (v) => y(-v), y0, gap, true);
    kids.push(svgEl('path', { d: p.area, class: 'area exp' }), svgEl('path', { d: p.line, class: 'line exp' }));
  }
  const p = paths(bs, 'power_import', x, y, y0, gap);
  kids.push(svgEl('path', { d: p.area, class: 'area imp' }), svgEl('path', { d: p.line, class: 'line imp' }));
  const lb = bs[bs.length - 1];
  if (lb && isNum(lb.power_import)) kids.push(svgEl('circle', { cx: x(lb.t).toFixed(1), cy: y(lb.power_import).toFixed(1), r: 3.5, class: 'dot imp' }));
  if (!bs.length) kids.push(svgEl('text', { x: L + cw / 2, y: T + ch / 2, class: 'empty', 'text-anchor': 'middle' }, 'Collecting data…'));
  kids.push(svgEl('line', { class: 'cursor', y1: T, y2: H - B, visibility: 'hidden' }));
  svg.replaceChildren(...kids);
  S.cb = { bs, x, start, L, cw, W };
  show('legend-export', hasE);

  // Summary for screen readers, and last-hour average/peak from the raw points
  let n = 0, sum = 0, peak = null, low = null;
  for (const q of S.pts) {
    if (q.t < start || !isNum(q.power_import)) continue;
    n++; sum += q.power_import;
    peak = peak === null ? q.power_import : Math.max(peak, q.power_import);
    low = low === null ? q.power_import : Math.min(low, q.power_import);
  }
  const avg = n ? +(sum / n).toFixed(3) : null;
  put('power-avg', avg, ...pw(avg));
  put('power-peak', peak, ...pw(peak));
  show('power-hour', n >= 6);
  $('chart-desc').textContent = n ? 'Import over the last hour: average ' + pwStr(avg) + ', lowest ' + pwStr(low) + ', highest ' + pwStr(peak) +
    (hasE ? '; export up to ' + pwStr(maxE) : '') + '.' : 'No data yet.';
}
function hover(ev) {
  const c = S.cb, svg = $('chart'), tip = $('chart-tip');
  if (!c || !c.bs.length) return;
  const r = svg.getBoundingClientRect();
  const t = c.start + ((((ev.clientX - r.left) / r.width) * c.W - c.L) / c.cw) * HOUR;
  let best = c.bs[0];
  for (const b of c.bs) if (Math.abs(b.t - t) < Math.abs(best.t - t)) best = b;
  if (Math.abs(best.t - t) > 5 * 60e3) return leave();
  const cx = c.x(best.t), cur = svg.querySelector('.cursor');
  cur.setAttribute('x1', cx); cur.setAttribute('x2', cx); cur.setAttribute('visibility', 'visible');
  tip.replaceChildren(el('strong', '', hhmm(new Date(best.t))), el('span', 'imp', 'Import ' + pwStr(best.power_import)));
  if (best.power_export > 0) tip.append(el('span', 'exp', 'Export ' + pwStr(best.power_export)));
  tip.hidden = false;
  tip.style.left = Math.min(Math.max((cx / c.W) * r.width, 60), r.width - 60) + 'px';
}
function leave() {
  $('chart-tip').hidden = true;
  const cur = $('chart').querySelector('.cursor');
  if (cur) cur.setAttribute('visibility', 'hidden');
}
function drawSpark() {
  const svg = $('flow-chart'), on = !$('sec-water').hidden && S.pts.some((p) => isNum(p.hot_water_flow));
  show('flow-fig', on);
  if (!on) return;
  const [W, H] = size(svg, 100, 24), end = chartEnd(), start = end - HOUR;
  const bw = Math.max(10e3, Math.ceil(HOUR / (W / 2) / 5e3) * 5e3);
  const bs = buckets(['hot_water_flow'], start, bw).filter((b) => b.t >= start);
  const mx = Math.max(0, ...bs.map((b) => b.hot_water_flow || 0)), top = Math.max(mx, 0.3) * 1.08;
  const p = paths(bs, 'hot_water_flow', (t) => ((t - start) / HOUR) * W, (v) => 2 + (1 - v / top) * (H - 3), H - 1, gapMs(bw));
  svg.replaceChildren(svgEl('line', { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: 'base' }),
    svgEl('path', { d: p.area, class: 'area hw' }), svgEl('path', { d: p.line, class: 'line hw' }));
  $('flow-cap').textContent = 'Flow, last hour · peak ' + fx((mx * 1000) / 60, 1) + ' L/min';
}

// ---- start
function start() {
  const svg = $('chart');
  for (const e of ['pointermove', 'pointerdown']) svg.addEventListener(e, hover);
  svg.addEventListener('pointerleave', leave);
  if (window.ResizeObserver) new ResizeObserver(schedule).observe($('main'));
  else addEventListener('resize', schedule);
  fetchReading().then(loadHistory);
  fetchStatus();
  connect();
  setInterval(fetchStatus, 5000);
  setInterval(tick, 1000);
  setInterval(schedule, 15000);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) { fetchStatus(); fetchReading(); } });
}
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
})();
