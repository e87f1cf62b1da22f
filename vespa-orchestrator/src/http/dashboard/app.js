// VESPA dashboard: polls the orchestrator's API every second. Plain JavaScript, no build,
// no external resource. Everything shown from the API goes through textContent (never
// innerHTML): node names, addresses and alert texts come from the network.
'use strict';

const POLL_MS = 1000;
const MAX_CHARTS = 24;
const KEEP_ALERTS = 200;
const SHOWN_ALERTS = 60;
const TOKEN_KEY = 'vespa.api.token';
const SVG_NS = 'http://www.w3.org/2000/svg';
const SAMPLE_KINDS = new Set(['bandwidth', 'connections']);
// Interface names of VM network devices (libvirt's vnetN, tap, Xen vif, macvtap).
const VM_IFACE = /^(vnet|tap|vif|macvtap)/;

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function empty(text) { return h('p', { class: 'empty' }, text); }

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
}

async function getJson(path) {
  const r = await fetch(path, { cache: 'no-store' });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error) || (r.status + ' ' + r.statusText));
  return body;
}

// Replaces the children of `el` (by id) with `nodes`.
function show(id, ...nodes) { $(id).replaceChildren(...nodes.flat()); }

// --- token ------------------------------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

function showTokenState() {
  $('token-state').textContent = token() ? 'token kept for this tab' : 'no token (releases disabled)';
  $('token').value = '';
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('token').value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  showTokenState();
  renderActions();
});
$('token-clear').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); showTokenState(); renderActions(); });

// --- node tree ----------------------------------------------------------------------------

function treeNode(n) {
  const label = h('span', { class: 'node' },
    h('span', { class: 'name' }, n.name),
    ' ', h('span', { class: 'kind kind-' + String(n.kind).replace(/[^a-z_]/g, '') }, n.kind),
    n.listen ? h('span', { class: 'muted' }, ' ' + n.listen) : null);
  const li = h('li', {}, label);
  if (n.error) li.append(h('div', { class: 'error' }, 'unreachable: ' + n.error));
  const kids = n.children || [];
  if (kids.length) li.append(h('ul', {}, kids.map(treeNode)));
  return li;
}

async function pollTree() {
  const t = await getJson('/archi');
  const kids = t.children || [];
  show('tree', h('ul', { class: 'root', 'aria-label': 'node tree' }, treeNode(t)),
    kids.length ? [] : empty('no node registered under ' + t.name + ' yet'));
}

// --- rate charts --------------------------------------------------------------------------

// One rate chart. `title` names it, `gapKey` ("origin/iface") tells its sample interval,
// `badge` (or null) marks a VM, `data` becomes data-* attributes (the tests find charts by them).
function chart(title, gapKey, badge, data, rxDeltas, txDeltas) {
  const W = 320, H = 110, P = 4;
  const gap = sampleGap[gapKey];
  // Per second once the sample interval is known, else per sample.
  const per = gap ? (d) => d.map((v) => v / gap) : (d) => d;
  const unit = gap ? '/s' : ' per sample';
  const rx = per(rxDeltas), tx = per(txDeltas);
  const fmt = (v) => (v === null ? '–' : bytes(Math.round(v)) + unit);
  const max = Math.max(1, ...rx, ...tx);
  const n = Math.max(rx.length, tx.length, 2);
  const pts = (s) => s.map((v, i) => {
    const x = P + (i * (W - 2 * P)) / (n - 1);
    const y = H - P - (v * (H - 2 * P)) / max;
    return x.toFixed(1) + ',' + y.toFixed(1);
  }).join(' ');
  const last = (s) => (s.length ? s[s.length - 1] : null);
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', class: 'chart',
    'aria-label': `${title}: rx ${fmt(last(rx))}, tx ${fmt(last(tx))} (peak ${fmt(max)})` });
  for (const f of [0.25, 0.5, 0.75]) {
    const y = (P + f * (H - 2 * P)).toFixed(1);
    s.append(svg('line', { x1: P, x2: W - P, y1: y, y2: y, class: 'grid' }));
  }
  if (rx.length) s.append(svg('polyline', { points: pts(rx), class: 'rx' }));
  if (tx.length) s.append(svg('polyline', { points: pts(tx), class: 'tx' }));
  const attrs = { class: 'chart-box' + (data.vm && !data.iface ? ' vm-total' : '') };
  for (const [k, v] of Object.entries(data)) attrs['data-' + k] = v;
  return h('figure', attrs,
    h('figcaption', {},
      h('span', { class: 'name' }, title),
      badge ? h('span', { class: 'badge vm', title: badge.title }, badge.text) : null,
      h('span', { class: 'peak muted' }, 'peak ' + fmt(max))),
    s,
    h('div', { class: 'now' },
      h('span', { class: 'key rx' }, 'rx ' + fmt(last(rx))),
      h('span', { class: 'key tx' }, 'tx ' + fmt(last(tx))),
      gap ? h('span', { class: 'muted' }, `sample every ${gap < 1 ? Math.round(gap * 1000) + ' ms' : gap.toFixed(1) + ' s'}`) : null));
}

async function pollRates() {
  const [c, v] = await Promise.all([getJson('/api/v1/counters'), getJson('/api/v1/vms')]);
  const vmOf = c.vms || {};
  // One chart per VM (its interfaces summed), then one per interface; VMs first: they are
  // what the operator protects.
  const vms = (v.vms || []).slice(0, MAX_CHARTS);
  const vmBoxes = vms.map((t) => chart('VM ' + t.vm, t.interfaces[0], { text: t.interfaces.length + ' if', title: 'sum of ' + t.interfaces.join(', ') },
    { vm: t.vm }, t.rx || [], t.tx || []));
  const ifaces = (c.interfaces || []).slice(0, Math.max(0, MAX_CHARTS - vmBoxes.length));
  if (!ifaces.length) { show('charts', empty('no bandwidth samples yet (no bandwidth agent reporting)')); return; }
  const boxes = await Promise.all(ifaces.map(async (oi) => {
    const i = oi.indexOf('/');
    const origin = oi.slice(0, i), iface = oi.slice(i + 1);
    const q = '?iface=' + encodeURIComponent(iface) + '&origin=' + encodeURIComponent(origin);
    const vm = vmOf[oi];
    const badge = vm ? { text: 'VM ' + vm, title: 'network device of VM ' + vm }
      : VM_IFACE.test(iface) ? { text: 'VM', title: 'a VM network device' } : null;
    try {
      const [rx, tx] = await Promise.all([getJson('/recv_bytes' + q), getJson('/trans_bytes' + q)]);
      return chart(origin + ' / ' + iface, oi, badge, vm ? { iface, origin, vm } : { iface, origin }, rx || [], tx || []);
    } catch (e) {
      return h('figure', { class: 'chart-box' }, h('figcaption', {}, oi), h('p', { class: 'error' }, String(e.message)));
    }
  }));
  const isVm = (b) => Number(Boolean(b.dataset.vm) || VM_IFACE.test(b.dataset.iface || ''));
  boxes.sort((a, b) => isVm(b) - isVm(a));
  const more = (c.interfaces || []).length - ifaces.length;
  show('charts', vmBoxes, boxes, more > 0 ? h('p', { class: 'muted' }, `${more} more interfaces not shown`) : []);
}

// --- top remote addresses -----------------------------------------------------------------

async function pollRemotes() {
  // Addresses whose connections all closed are still listed (with 0) until the next report.
  const rows = (await getJson('/get_ip_connections')).filter((r) => r.value > 0).slice(0, 10);
  if (!rows.length) { show('remotes', empty('no connections reported yet')); return; }
  const max = Math.max(1, ...rows.map((r) => r.value));
  show('remotes', h('table', { class: 'remotes' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'remote address'), h('th', { scope: 'col' }, 'connections'), h('th', { scope: 'col' }, h('span', { class: 'sr' }, 'share')))),
    h('tbody', {}, rows.map((r) => {
      const bar = h('span', { class: 'bar' });
      bar.style.width = ((100 * r.value) / max).toFixed(0) + '%';
      return h('tr', {}, h('td', { class: 'mono' }, r.ip), h('td', { class: 'num' }, r.value), h('td', { class: 'barcell' }, bar));
    }))));
}

// --- alert log ----------------------------------------------------------------------------

const alertState = { next: null, kept: [], seen: 0, byKind: {} };
// Seconds between two samples of each "origin/iface", estimated from the timestamps of its
// bandwidth alerts (one alert per sample): turns deltas into per-second rates.
const sampleGap = {};
const lastSampleNs = {};

function noteSample(a) {
  const v = a.body && a.body.Bandwidth;
  if (!v) return;
  const key = a.origin + '/' + v.iface;
  const prev = lastSampleNs[key];
  lastSampleNs[key] = a.timestamp_ns;
  if (prev === undefined || a.timestamp_ns <= prev) return;
  const dt = (a.timestamp_ns - prev) / 1e9;
  if (dt > 60) return; // a gap (agent restarted), not the interval
  sampleGap[key] = sampleGap[key] === undefined ? dt : 0.8 * sampleGap[key] + 0.2 * dt;
}

function describe(a) {
  const b = a.body || {};
  const [kind] = typeof b === 'string' ? ['?'] : Object.keys(b);
  const v = b[kind];
  switch (kind) {
    case 'Bandwidth': return `${v.vm ? 'VM ' + v.vm + ', ' : ''}${v.iface}: rx ${bytes(v.rx_bytes)} tx ${bytes(v.tx_bytes)} (totals)`;
    case 'Connections': {
      const live = v.per_remote.filter((p) => p[1] > 0);
      const n = live.length, c = live.reduce((s, p) => s + p[1], 0);
      return `${n} remote address${n === 1 ? '' : 'es'}, ${c} connection${c === 1 ? '' : 's'}`;
    }
    case 'ConnThreshold': return `${v.addr}: ${v.established} established connections (limit ${v.threshold})`;
    case 'SynThreshold': return `${v.addr}: ${v.syns_in_second} SYN/s (limit ${v.threshold})`;
    case 'Infected': return `VM ${v.vm}: ${v.file} infected (${v.signature})`;
    case 'ActuatorFailed': return `${v.actuator} failed to ${v.action}: ${v.error}`;
    case 'Text': return v;
    case 'Node': return `node ${v.node} ${v.event.toLowerCase()}: ${v.detail}`;
    case 'Policy': return `policy ${v.kind}${v.at ? ' at ' + v.at : ''}: ${v.text}`;
    default: return JSON.stringify(b);
  }
}

async function pollAlerts() {
  // Follow `next` until a page is not full (at most 5 pages a tick). The first poll starts
  // near the end: the log shows what happens now, not the history since start.
  if (alertState.next === null) {
    const head = await getJson('/api/v1/alerts?from=0&limit=1');
    const c = await getJson('/api/v1/counters');
    alertState.next = Math.max(head.first || 0, (c.alerts_seen || 0) - KEEP_ALERTS);
  }
  for (let i = 0; i < 5; i++) {
    const p = await getJson(`/api/v1/alerts?from=${alertState.next}&limit=1000`);
    for (const x of p.alerts) {
      alertState.kept.push(x);
      alertState.byKind[x.kind] = (alertState.byKind[x.kind] || 0) + 1;
      noteSample(x.alert);
      alertState.seen++;
    }
    alertState.next = p.next;
    if (p.alerts.length < 1000) break;
  }
  if (alertState.kept.length > KEEP_ALERTS) alertState.kept.splice(0, alertState.kept.length - KEEP_ALERTS);
  renderAlerts();
}

function renderAlerts() {
  const hide = $('hide-samples').checked;
  const list = alertState.kept.filter((x) => !(hide && SAMPLE_KINDS.has(x.kind))).slice(-SHOWN_ALERTS).reverse();
  $('alert-count').textContent = alertState.seen
    ? '(' + Object.entries(alertState.byKind).map(([k, n]) => `${k} ${n}`).join(', ') + ')' : '';
  if (!list.length) { show('alerts', empty(alertState.seen ? 'no alerts other than samples yet' : 'no alerts yet')); return; }
  show('alerts', h('ol', { class: 'log', reversed: '' }, list.map((x) => {
    const a = x.alert;
    const t = new Date(Math.floor(a.timestamp_ns / 1e6));
    const serious = !SAMPLE_KINDS.has(x.kind);
    return h('li', { class: serious ? 'serious' : '' },
      h('time', { datetime: t.toISOString() }, t.toLocaleTimeString([], { hour12: false })),
      h('span', { class: 'kind kind-' + x.kind }, x.kind),
      h('span', { class: 'origin', title: (a.path || []).join(' > ') }, a.origin),
      h('span', { class: 'text' }, describe(a)));
  })));
}
$('hide-samples').addEventListener('change', renderAlerts);

// --- active actions and release -----------------------------------------------------------

let lastActions = null;
let lastPolicy = null;

async function release(key, button) {
  const out = $('release-result');
  if (!token()) { out.textContent = 'paste the API token above first: releasing needs it'; out.className = 'result error'; return null; }
  button.disabled = true;
  out.textContent = `releasing ${key}…`;
  out.className = 'result';
  try {
    const r = await fetch('/api/v1/release', { method: 'POST', cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token() },
      body: JSON.stringify({ target: key }) });
    const text = await r.text();
    let msg = text;
    try { const j = JSON.parse(text); msg = j.error || `released ${j.released}: ${j.result}`; } catch (_) { /* not JSON */ }
    out.textContent = `release ${key}: ${r.status} ${msg}`;
    out.className = r.ok ? 'result ok' : 'result error';
    return { status: r.status, text };
  } catch (e) {
    out.textContent = `release ${key}: ${e.message}`;
    out.className = 'result error';
    return { status: 0, text: e.message };
  } finally {
    button.disabled = false;
    pollActions().catch(() => {});
  }
}

function span(d) {
  d = Math.max(0, Math.floor(d));
  return d < 120 ? `${d} s` : d < 7200 ? `${Math.floor(d / 60)} min` : `${Math.floor(d / 3600)} h`;
}

function renderActions() {
  const rows = ((lastActions && lastActions.actions) || []).concat(stubActions);
  const policy = lastPolicy || {};
  const badge = $('policy-state');
  badge.textContent = !lastPolicy ? '' : !policy.loaded ? 'no policy' : policy.dry_run ? 'dry-run' : 'enforcing';
  badge.className = 'badge ' + (!policy.loaded ? 'off' : policy.dry_run ? 'warn' : 'on');
  // HOs of other processes that did not answer: what they hold is missing from the table.
  const unreachable = (lastActions && lastActions.unreachable) || [];
  const missing = unreachable.length
    ? [h('p', { class: 'result error', id: 'actions-unreachable' }, 'not answering, their actions are not listed: ' + unreachable.join('; '))]
    : [];
  if (!rows.length) {
    show('actions', missing, empty(lastPolicy && !policy.loaded
      ? 'no policy loaded: nothing will be blocked or isolated (load rules with POST /api/v1/policy/reload)'
      : 'no active blocks or isolations'));
    return;
  }
  show('actions', missing, h('table', { class: 'actions' },
    h('thead', {}, h('tr', {}, ['action', 'target', 'actuator', 'since', 'expires', ''].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.map((a) => h('tr', { 'data-key': a.key },
      h('td', {}, a.action, a.dry_run ? h('span', { class: 'badge warn' }, 'dry-run') : null),
      h('td', { class: 'mono' }, a.target),
      h('td', {}, a.actuator, a.at ? h('span', { class: 'badge', title: `placed by the fast-path rule of ${a.at}` }, `at ${a.at}`) : null),
      h('td', {}, span(Date.now() / 1000 - a.since_unix_s) + ' ago'),
      h('td', {}, a.expires_unix_s ? 'in ' + span(a.expires_unix_s - Date.now() / 1000) : 'never'),
      h('td', {}, h('button', { type: 'button', class: 'release', 'aria-label': `release ${a.action} of ${a.target}`,
        disabled: token() ? null : '', title: token() ? '' : 'paste the API token first',
        onclick: (e) => release(a.key, e.currentTarget) }, 'Release')))))));
}

async function pollActions() {
  [lastActions, lastPolicy] = await Promise.all([getJson('/api/v1/actions'), getJson('/api/v1/policy')]);
  renderActions();
}

// --- kernel firewalls --------------------------------------------------------------------
// Each firewall agent of the topology, asked through the tree by the API: its totals and
// its busiest blocks with their drop counters. Polled on its own, so an agent that is slow to
// answer (the API waits for it up to its call timeout) never holds up the other panels.

const FIREWALL_ROWS = 20;

function count(n) {
  return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US');
}

function firewallBox(f) {
  const t = f.totals;
  const facts = t ? [
    ['dropped', `${count(t.dropped_packets)} packets, ${bytes(t.dropped_bytes)}`],
    ['blocks', `${count(t.blocks)} of ${count(t.block_capacity)}`],
    t.xdp_dropped_packets ? ['at XDP', `${count(t.xdp_dropped_packets)} packets`] : null,
    ['throttled', `${count(t.throttled_packets)} packets dropped, ${count(t.throttles)} throttle${t.throttles === 1 ? '' : 's'}`],
    ['protected', `${count(t.allowed)} source${t.allowed === 1 ? '' : 's'}, ${count(t.protected_passed)} packets let through`],
    ['reflex', (t.reflex && (t.reflex.syn_per_sec || t.reflex.conn)
      ? [t.reflex.syn_per_sec ? `> ${t.reflex.syn_per_sec} SYN/s` : null, t.reflex.conn ? `> ${t.reflex.conn} connections` : null].filter(Boolean).join(' or ')
      : 'off') + `; ${count(t.reflex_placed)} placed, ${count(t.reflex_capped)} capped, ${count(t.reflex_protected)} refused (protected)`],
  ].filter(Boolean) : [];
  const rows = (f.blocks || []).slice(0, FIREWALL_ROWS);
  const hidden = (f.blocks_listed || 0) - rows.length;
  return h('div', { class: 'firewall', 'data-node': f.node },
    h('h3', {}, h('span', { class: 'name' }, f.node),
      t ? h('span', { class: 'badge ' + (t.dropped_packets ? 'warn' : 'on'), 'data-dropped': t.dropped_packets }, count(t.dropped_packets) + ' dropped') : null),
    (f.errors || []).map((e) => h('p', { class: 'error' }, e)),
    facts.length ? h('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])) : null,
    rows.length
      ? h('table', { class: 'blocks' },
        h('thead', {}, h('tr', {}, ['source', 'packets', 'bytes', 'expires', 'first drop'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, rows.map((b) => h('tr', { 'data-target': b.target, 'data-packets': b.packets },
          h('td', { class: 'mono' }, b.target, b.reflex ? h('span', { class: 'badge warn', title: 'placed by the kernel reflex' }, 'reflex') : null),
          h('td', { class: 'num' }, count(b.packets)),
          h('td', { class: 'num' }, bytes(b.bytes)),
          h('td', {}, b.expires_in_ms === null || b.expires_in_ms === undefined ? 'never' : 'in ' + span(b.expires_in_ms / 1000)),
          h('td', {}, b.first_drop_after_ns === null || b.first_drop_after_ns === undefined ? '–'
            : b.first_drop_after_ns < 1e6 ? `${(b.first_drop_after_ns / 1e3).toFixed(1)} µs after` : `${span(b.first_drop_after_ns / 1e9)} after`)))))
      : (f.errors || []).some((e) => e.startsWith('status_hackers')) ? null : empty('no blocks'),
    hidden > 0 ? h('p', { class: 'muted' }, `${hidden} less busy block${hidden === 1 ? '' : 's'} not shown`) : null);
}

async function pollFirewalls() {
  try {
    const r = await getJson('/api/v1/firewall');
    const fws = r.firewalls || [];
    show('firewalls', fws.length ? fws.map(firewallBox) : empty('no firewall agent (agent_firewall) in the topology'));
  } catch (e) {
    show('firewalls', h('p', { class: 'error' }, 'the firewalls could not be read: ' + e.message));
  }
  document.body.dataset.firewallPolls = String(Number(document.body.dataset.firewallPolls || 0) + 1);
}

async function firewallLoop() {
  await pollFirewalls();
  setTimeout(firewallLoop, POLL_MS);
}

// --- self-test (the browser tests) -------------------------------------------------------
// `?selftest=stub` adds a stub action (key `selftest-stub`) to the table, for a WebDriver
// test to release by hand; `?selftest=release` also clicks the stub's release button itself,
// with the token kept in this tab (typed into the token field), writing the answer into
// #selftest-result. A token is never read from the address: addresses end up in the
// history, in proxy and server logs and on screen.

let stubActions = [];

async function selftest() {
  const q = new URLSearchParams(location.search);
  const mode = q.get('selftest');
  if (mode !== 'release' && mode !== 'stub') return;
  history.replaceState(null, '', location.pathname + (mode === 'stub' ? '?selftest=stub' : '')); // a reload does not release again
  const now = Math.floor(Date.now() / 1000);
  stubActions = [{ key: 'selftest-stub', action: 'block', target: '192.0.2.1', actuator: 'selftest', since_unix_s: now, expires_unix_s: null, dry_run: false }];
  renderActions();
  if (mode !== 'release') return;
  const out = $('selftest-result');
  if (!token()) { out.textContent = 'selftest release: no token kept (type it into the token field; a token in the address is ignored)'; return; }
  const button = document.querySelector('tr[data-key="selftest-stub"] button.release');
  if (!button) { out.textContent = 'selftest release: no button'; return; }
  const done = new Promise((resolve) => {
    const obs = new MutationObserver(() => { if (/^release selftest-stub: \d/.test($('release-result').textContent)) { obs.disconnect(); resolve(); } });
    obs.observe($('release-result'), { childList: true, characterData: true, subtree: true });
  });
  button.click();
  await done;
  out.textContent = 'selftest ' + $('release-result').textContent;
}

// --- polling ------------------------------------------------------------------------------

async function tick() {
  const parts = [['tree', pollTree], ['rates', pollRates], ['remotes', pollRemotes], ['alerts', pollAlerts], ['actions', pollActions]];
  const failed = [];
  await Promise.all(parts.map(([name, f]) => f().catch((e) => { failed.push(`${name}: ${e.message}`); })));
  const st = $('status');
  const t = new Date().toLocaleTimeString([], { hour12: false });
  st.textContent = failed.length ? `API trouble at ${t}: ${failed.join('; ')}` : `live, updated ${t}`;
  st.className = failed.length ? 'status error' : 'status ok';
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

async function loop() {
  await tick();
  setTimeout(loop, POLL_MS);
}

showTokenState();
selftest();
loop();
firewallLoop();
