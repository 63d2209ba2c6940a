// gradq's web page: the queue, a job, a sweep, submit. Everything it shows comes from gradq's
// API under this page's own folder (relative URLs: it works behind a path prefix). Text from
// the API is only ever set as textContent (never parsed as HTML). With GRADQ_AUTH=keys the
// key is kept in this tab's sessionStorage and sent as `Authorization: Bearer`; live
// updates read the SSE stream with fetch() for the same reason (EventSource sends no header).
'use strict';
(function () {
  const KEY_ITEM = 'gradq.key';
  const PAGE_SIZE = 25;
  const REFRESH_MS = 3000;
  const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'pruned'];
  const SWEEP_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'pruned']);
  const main = document.getElementById('main');
  const announcer = document.getElementById('announce');
  let key = sessionStorage.getItem(KEY_ITEM);
  let view = { alive: true, stops: [] }; // the current view: its timers, streams and charts

  // --- DOM ----------------------------------------------------------------------------------

  // el('td', {class: 'num', text: '3'}, child, 'text', …): children that are strings become
  // text nodes; attributes are set one by one (never markup).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'class') node.className = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const announce = (text) => { announcer.textContent = text; };
  const badge = (status) => el('span', { class: `status s-${status}`, text: status });
  const fmt = (v, digits = 4) => {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return v.toLocaleString('en');
      const a = Math.abs(v);
      return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(digits);
    }
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
  };
  const when = (iso) => (iso ? new Date(iso).toLocaleString('en-GB', { hour12: false }) : '–');
  function table(caption, heads, rows, opts = {}) {
    const head = el('tr', {}, heads.map((h) => {
      const [text, cls] = Array.isArray(h) ? h : [h, null];
      return el('th', { scope: 'col', class: cls, text });
    }));
    return el('div', { class: 'scroll' },
      el('table', { id: opts.id },
        el('caption', { text: caption }), el('thead', {}, head), el('tbody', {}, rows)));
  }

  // --- the API ------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, body) {
      const error = body && body.error;
      super(error ? error.message : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function headers(extra) {
    const h = { Accept: 'application/json', ...extra };
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function api(path, opts = {}) {
    const init = { method: opts.method || 'GET', headers: headers(), cache: 'no-store',
                   credentials: 'omit', signal: opts.signal };
    if (opts.json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.json);
    }
    const r = await fetch(path, init);
    const type = r.headers.get('content-type') || '';
    const body = type.includes('json') ? await r.json() : await r.blob();
    if (r.status === 401) { askForKey(body); throw new ApiFailure(401, body); }
    if (!r.ok) throw new ApiFailure(r.status, body);
    return body;
  }

  // The job's live events (Server-Sent Events) read with fetch(), so that the key travels as
  // a header; `on(kind, data)` for each event. Resolves when the stream ends.
  async function stream(path, on, signal) {
    const r = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }),
                                  cache: 'no-store', credentials: 'omit', signal });
    if (!r.ok || !r.body) throw new ApiFailure(r.status, null);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let kind = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) kind = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
        }
        if (data.length) on(kind, JSON.parse(data.join('\n')));
      }
    }
  }

  const enc = encodeURIComponent;

  // --- views and their life -----------------------------------------------------------------

  function leave() {
    view.alive = false;
    for (const stop of view.stops) { try { stop(); } catch (e) { /* gone already */ } }
    view = { alive: true, stops: [] };
    return view;
  }
  function every(ms, fn, current) {
    const timer = setInterval(() => { if (current.alive) fn(); }, ms);
    current.stops.push(() => clearInterval(timer));
  }
  function show(...nodes) {
    main.replaceChildren(...nodes);
  }
  function failure(e) {
    if (e instanceof ApiFailure && e.status === 401) return; // the key form is shown
    show(el('h1', { text: 'Something went wrong' }),
         el('p', { class: 'errors', role: 'alert', text: e.message || String(e) }));
  }

  function route() {
    const current = leave();
    const hash = location.hash.replace(/^#/, '') || '/';
    const [path, query] = hash.split('?');
    const params = new URLSearchParams(query || '');
    const parts = path.split('/').filter(Boolean);
    let done;
    if (parts[0] === 'job' && parts[1]) done = jobView(decodeURIComponent(parts[1]), current);
    else if (parts[0] === 'sweep' && parts[1]) done = sweepView(decodeURIComponent(parts[1]), current);
    else if (parts[0] === 'sweeps') done = sweepsView(params, current);
    else if (parts[0] === 'submit') done = submitView(current);
    else done = queueView(params, current);
    Promise.resolve(done).catch(failure);
  }

  // --- keys ---------------------------------------------------------------------------------

  function askForKey(body) {
    const current = leave();
    current.alive = false;
    const input = el('input', { id: 'api-key', type: 'password', autocomplete: 'off',
                                spellcheck: 'false', required: true });
    const wrong = key ? el('p', { class: 'errors', role: 'alert',
                                  text: (body && body.error && body.error.message) || 'refused' })
                      : null;
    const form = el('form', { class: 'keyform', id: 'key-form' },
      el('label', { for: 'api-key', text: 'API key' }), input,
      el('p', { class: 'muted', text: 'This service needs an API key (gradq keys create). ' +
        'It is kept in this tab only (sessionStorage) and sent as an Authorization header.' }),
      wrong,
      el('button', { type: 'submit', class: 'primary', text: 'Use this key' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_ITEM, key);
      updateWho();
      route();
    });
    key = null;
    sessionStorage.removeItem(KEY_ITEM);
    updateWho();
    show(el('h1', { text: 'Sign in with an API key' }), form);
    input.focus();
  }
  function updateWho() {
    document.getElementById('forget').hidden = !key;
    document.getElementById('who').textContent = key ? 'signed in with an API key' : '';
  }
  document.getElementById('forget').addEventListener('click', () => {
    key = null;
    sessionStorage.removeItem(KEY_ITEM);
    updateWho();
    route();
  });

  // --- the queue ----------------------------------------------------------------------------

  // Positions and pending reasons of queued jobs (GET one job each), at most `limit` at once.
  async function eachLimited(items, limit, fn) {
    const queue = [...items];
    const workers = Array.from({ length: Math.min(limit, queue.length) }, async () => {
      while (queue.length) { await fn(queue.shift()); }
    });
    await Promise.all(workers);
  }

  function whereCell(job, detail) {
    const cell = el('td', { class: 'where' });
    if (job.status === 'queued') {
      const d = detail || job;
      if (d.queue_position !== null && d.queue_position !== undefined) {
        cell.append(el('div', { text: `position ${d.queue_position + 1} in the queue` }));
      }
      cell.append(el('div', { class: 'muted', text: d.pending_reason || (detail ? '' : '…') }));
    } else if (job.status === 'running') {
      const p = job.progress || {};
      const m = p.metrics || {};
      const epochs = p.epochs ? ` of ${p.epochs}` : '';
      cell.append(el('div', { text: `epoch ${p.epoch || 0}${epochs}` }));
      if (p.epochs) {
        const tenth = Math.round(Math.min(1, (p.epoch || 0) / p.epochs) * 10) * 10;
        cell.append(el('div', { class: 'bar', role: 'presentation' }, el('span', { class: `w${tenth}` })));
      }
      const shown = ['train_loss', 'val_loss', 'val_accuracy'].filter((k) => m[k] !== undefined);
      if (shown.length) cell.append(el('div', { class: 'muted', text: shown.map((k) => `${k} ${fmt(m[k])}`).join(' · ') }));
      if (job.node) cell.append(el('div', { class: 'muted', text: `on ${job.node}` }));
    } else if (job.result && job.result.metrics) {
      const m = job.result.metrics;
      const keys = ['test_accuracy', 'test_r2', 'test_loss', 'val_accuracy', 'val_loss']
        .filter((k) => m[k] !== undefined).slice(0, 2);
      cell.append(el('div', { text: keys.map((k) => `${k} ${fmt(m[k])}`).join(' · ') }));
    } else if (job.error) {
      const e = job.error;
      cell.append(el('div', { class: 'muted', text: typeof e === 'object' ? `${e.type || 'error'}: ${e.message || ''}` : String(e) }));
    }
    return cell;
  }

  async function cancelJob(job, button) {
    button.disabled = true;
    try {
      await api(`v1/jobs/${enc(job.id)}/cancel`, { method: 'POST' });
      announce(`cancel requested for ${job.name}`);
    } catch (e) {
      button.disabled = false;
      announce(`could not cancel ${job.name}: ${e.message}`);
      alertBox(e.message);
    }
  }
  function alertBox(text) {
    const box = document.getElementById('page-alert');
    if (box) { box.hidden = false; box.textContent = text; }
  }

  function jobRow(job, detail, onCancel) {
    const link = el('a', { href: `#/job/${enc(job.id)}`, text: job.name });
    const cancel = !TERMINAL.has(job.status) && !job.cancel_requested
      ? el('button', { type: 'button', class: 'danger', 'data-job': job.id,
                       'aria-label': `Cancel job ${job.name}`, text: 'Cancel' })
      : (job.cancel_requested && !TERMINAL.has(job.status) ? el('span', { class: 'muted', text: 'cancelling' }) : null);
    if (cancel && cancel.tagName === 'BUTTON') cancel.addEventListener('click', () => onCancel(job, cancel));
    return el('tr', { 'data-id': job.id, 'data-status': job.status },
      el('td', { class: 'name' }, link, el('div', { class: 'muted wide', text: job.id })),
      el('td', {}, badge(job.status)),
      whereCell(job, detail),
      el('td', { class: 'wide', text: when(job.created_at) }),
      el('td', {}, cancel));
  }

  function filterForm(params, statuses, target, withName) {
    const status = el('select', { id: 'f-status', name: 'status' },
      el('option', { value: '', text: 'any' }),
      statuses.map((s) => el('option', { value: s, text: s, selected: params.get('status') === s })));
    const name = withName ? el('input', { id: 'f-name', name: 'name', type: 'search',
                                          value: params.get('name') || '' }) : null;
    const form = el('form', { class: 'filters', role: 'search', 'aria-label': 'Filter' },
      el('label', { for: 'f-status' }, 'Status', status),
      withName ? el('label', { for: 'f-name' }, 'Name (exact)', name) : null,
      el('button', { type: 'submit', text: 'Filter' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (status.value) q.set('status', status.value);
      if (name && name.value.trim()) q.set('name', name.value.trim());
      const s = q.toString();
      location.hash = `${target}${s ? `?${s}` : ''}`;
    });
    return form;
  }

  async function queueView(params, current) {
    const cursors = [null]; // the cursor of each page seen, the current one last
    const body = el('tbody', {});
    const older = el('button', { type: 'button', text: 'Older →' });
    const newer = el('button', { type: 'button', text: '← Newer', disabled: true });
    const where = el('span', { class: 'muted' });
    const sweepsBox = el('div', {});
    show(el('h1', { text: 'Queue' }),
      el('p', { id: 'page-alert', class: 'errors', role: 'alert', hidden: true }),
      sweepsBox,
      el('h2', { text: 'Jobs, newest first' }),
      filterForm(params, STATUSES, '#/', true),
      el('div', { class: 'scroll' },
        el('table', { id: 'jobs' },
          el('caption', { class: 'sr-only', text: 'Jobs, newest first' }),
          el('thead', {}, el('tr', {},
            el('th', { scope: 'col', text: 'Name' }), el('th', { scope: 'col', text: 'Status' }),
            el('th', { scope: 'col', text: 'Queue · progress · result' }),
            el('th', { scope: 'col', class: 'wide', text: 'Created' }),
            el('th', { scope: 'col', text: 'Action' }))),
          body)),
      el('div', { class: 'pager' }, newer, older, where));
    let next = null;
    let loading = false;
    const details = new Map();
    const load = async () => {
      if (loading) return;
      loading = true;
      try {
        const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
        for (const f of ['status', 'name']) if (params.get(f)) q.set(f, params.get(f));
        const cursor = cursors[cursors.length - 1];
        if (cursor) q.set('cursor', cursor);
        const page = await api(`v1/jobs?${q}`);
        if (!current.alive) return;
        next = page.next_cursor;
        const focused = document.activeElement && document.activeElement.getAttribute('data-job');
        const draw = () => {
          body.replaceChildren(...page.items.map((j) => jobRow(j, details.get(j.id), onCancel)));
          if (!page.items.length) body.append(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'No jobs.' })));
          if (focused) { const b = body.querySelector(`button[data-job="${CSS.escape(focused)}"]`); if (b) b.focus(); }
        };
        draw();
        older.disabled = !next;
        newer.disabled = cursors.length < 2;
        where.textContent = `page ${cursors.length}`;
        const queued = page.items.filter((j) => j.status === 'queued');
        if (queued.length) {
          await eachLimited(queued, 6, async (j) => {
            try { details.set(j.id, await api(`v1/jobs/${enc(j.id)}`)); } catch (e) { /* gone */ }
          });
          if (current.alive) draw();
        }
      } finally { loading = false; }
    };
    const onCancel = async (job, button) => { await cancelJob(job, button); await load(); };
    older.addEventListener('click', () => { if (next) { cursors.push(next); load(); } });
    newer.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); load(); } });
    await load();
    every(REFRESH_MS, load, current);
    sweepsSummary(sweepsBox, current).catch(() => {});
  }

  async function sweepsSummary(box, current) {
    const page = await api('v1/sweeps?limit=5');
    if (!current.alive || !page.items.length) return;
    box.replaceChildren(el('h2', { text: 'Sweeps, newest first' }),
      sweepTable(page.items, 'Newest sweeps'), el('p', {}, el('a', { href: '#/sweeps', text: 'All sweeps' })));
  }

  function sweepTable(items, caption) {
    return table(caption, ['Name', 'Status', ['Trials', 'num'], ['Best objective', 'num'], ['Created', 'wide']],
      items.map((s) => el('tr', { 'data-id': s.id },
        el('td', { class: 'name' }, el('a', { href: `#/sweep/${enc(s.id)}`, text: s.name })),
        el('td', {}, badge(s.status)),
        el('td', { class: 'num', text: `${s.trials} / ${s.total_trials}` }),
        el('td', { class: 'num', text: s.best ? fmt(s.best.objective) : '–' }),
        el('td', { class: 'wide', text: when(s.created_at) }))), { id: 'sweeps' });
  }

  async function sweepsView(params, current) {
    const cursors = [null];
    const box = el('div', {});
    const older = el('button', { type: 'button', text: 'Older →' });
    const newer = el('button', { type: 'button', text: '← Newer', disabled: true });
    show(el('h1', { text: 'Sweeps' }), filterForm(params, SWEEP_STATUSES, '#/sweeps', false), box,
      el('div', { class: 'pager' }, newer, older));
    let next = null;
    const load = async () => {
      const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (params.get('status')) q.set('status', params.get('status'));
      const cursor = cursors[cursors.length - 1];
      if (cursor) q.set('cursor', cursor);
      const page = await api(`v1/sweeps?${q}`);
      if (!current.alive) return;
      next = page.next_cursor;
      box.replaceChildren(page.items.length ? sweepTable(page.items, 'Sweeps, newest first')
                                            : el('p', { class: 'muted', text: 'No sweeps.' }));
      older.disabled = !next;
      newer.disabled = cursors.length < 2;
    };
    older.addEventListener('click', () => { if (next) { cursors.push(next); load(); } });
    newer.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); load(); } });
    await load();
    every(REFRESH_MS, load, current);
  }

  // --- charts -------------------------------------------------------------------------------

  const COLORS = ['#0b57d0', '#c5221f', '#188038', '#e37400', '#6e40c9', '#007b83', '#b0006d', '#5f6368'];
  function chartBox(id, label, tall) {
    const canvas = el('canvas', { id, role: 'img', 'aria-label': label });
    return [el('div', { class: tall ? 'chart tall' : 'chart' }, canvas), canvas];
  }
  function lineChart(canvas, title, current, yType) {
    const chart = new window.Chart(canvas, {
      type: 'line',
      data: { datasets: [] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
        normalized: true, spanGaps: true,
        plugins: { title: { display: true, text: title }, legend: { position: 'bottom' } },
        scales: { x: { type: 'linear', title: { display: true, text: 'epoch' } },
                  y: { type: yType || 'linear' } },
        elements: { point: { radius: 0, hitRadius: 6 } },
      },
    });
    current.stops.push(() => chart.destroy());
    return chart;
  }
  function series(chart, label) {
    let d = chart.data.datasets.find((s) => s.label === label);
    if (!d) {
      const color = COLORS[chart.data.datasets.length % COLORS.length];
      d = { label, data: [], borderColor: color, backgroundColor: color, borderWidth: 2 };
      chart.data.datasets.push(d);
    }
    return d;
  }
  function setPoint(chart, label, x, y) {
    if (y === null || y === undefined || !Number.isFinite(y)) return false;
    const d = series(chart, label);
    const at = d.data.findIndex((p) => p.x === x);
    if (at >= 0) d.data[at] = { x, y };
    else {
      d.data.push({ x, y });
      if (d.data.length > 1 && d.data[d.data.length - 2].x > x) d.data.sort((a, b) => a.x - b.x);
    }
    return true;
  }

  // --- a job --------------------------------------------------------------------------------

  // A curve's key (MLflow's `loss/train`, or a progress metric's flat `train_loss`) as
  // [chart, series]: the learning curves by quantity, the diagnostics by layer.
  function place(name) {
    let m = /^(loss|accuracy|r2|rmse)\/(train|val)$/.exec(name);
    if (m) return [m[1], m[2]];
    m = /^(train|val)_(loss|accuracy|r2|rmse)$/.exec(name);
    if (m) return [m[2], m[1]];
    m = /^(?:weights\/)?layer(\d+)_(dead_fraction|update_ratio)$/.exec(name);
    if (m) return [m[2], `layer ${m[1]}`];
    return null;
  }
  const CHART_TITLES = { loss: 'Loss', accuracy: 'Accuracy', r2: 'R²', rmse: 'RMSE',
                         dead_fraction: 'Dead units (fraction)', update_ratio: 'Update / weight ratio' };

  async function jobView(id, current) {
    const job = await api(`v1/jobs/${enc(id)}`);
    if (!current.alive) return;
    const statusSlot = el('span', {}, badge(job.status));
    const facts = el('dl', { class: 'facts', id: 'job-facts' });
    const actions = el('div', { class: 'actions' });
    const curves = el('div', { class: 'grid2', id: 'curves' });
    const layers = el('div', { class: 'grid2', id: 'layers' });
    const layerTable = el('div', {});
    const checks = el('div', { id: 'gradchecks' }, el('p', { class: 'muted', text: 'Loading…' }));
    const history = el('tbody', {});
    const artifacts = el('div', { id: 'artifacts' }, el('p', { class: 'muted', text: 'Loading…' }));
    show(
      el('p', {}, el('a', { href: '#/', text: '← Queue' })),
      el('h1', { id: 'job-name' }, job.name, ' ', statusSlot),
      el('p', { id: 'page-alert', class: 'errors', role: 'alert', hidden: true }),
      actions, facts,
      el('h2', { text: 'Learning curves' }), curves,
      el('h2', { text: 'Per-layer diagnostics' }), layers, layerTable,
      el('h2', { text: 'Gradient checks' }), checks,
      el('h2', { text: 'Status history' }),
      el('div', { class: 'scroll' }, el('table', { id: 'history' },
        el('caption', { class: 'sr-only', text: 'Status history' }),
        el('thead', {}, el('tr', {}, ['At', 'From', 'To', 'Attempt', 'Reason'].map((h) => el('th', { scope: 'col', text: h })))),
        history)),
      el('h2', { text: 'Spec' }),
      el('pre', { class: 'yaml', id: 'spec-yaml', tabindex: '0', 'aria-label': 'Job spec as YAML',
                  text: window.jsyaml.dump(job.spec, { lineWidth: 100 }) }),
      el('h2', { text: 'Artifacts' }), artifacts);

    const charts = {};
    const chartFor = (kind) => {
      if (!charts[kind]) {
        const isLayer = kind === 'dead_fraction' || kind === 'update_ratio';
        const [boxEl, canvas] = chartBox(`chart-${kind}`, `${CHART_TITLES[kind]} by epoch`);
        (isLayer ? layers : curves).append(boxEl);
        charts[kind] = lineChart(canvas, CHART_TITLES[kind], current, kind === 'update_ratio' ? 'logarithmic' : 'linear');
      }
      return charts[kind];
    };
    const plot = (name, x, y) => {
      const where = place(name);
      if (!where) return false;
      return setPoint(chartFor(where[0]), where[1], x, y);
    };
    const redraw = () => { for (const c of Object.values(charts)) c.update('none'); };
    const state = { job };

    const drawFacts = (j) => {
      state.job = j;
      statusSlot.replaceChildren(badge(j.status));
      const rows = [['Id', j.id], ['Status', j.status + (j.cancel_requested && !TERMINAL.has(j.status) ? ' (cancel requested)' : '')],
        ['Attempt', `${j.attempt} of ${j.max_attempts}`], ['Priority', j.priority], ['Tenant', j.tenant]];
      if (j.status === 'queued') {
        if (j.queue_position !== null && j.queue_position !== undefined) rows.push(['Queue position', j.queue_position + 1]);
        if (j.pending_reason) rows.push(['Waiting because', j.pending_reason]);
      }
      if (j.node) rows.push(['Node', j.node]);
      const p = j.progress;
      if (p && !TERMINAL.has(j.status)) {
        rows.push(['Progress', `epoch ${p.epoch}${p.epochs ? ` of ${p.epochs}` : ''}, step ${p.step}`]);
        for (const [k, v] of Object.entries(p.metrics || {})) if (!/^layer/.test(k)) rows.push([k, fmt(v)]);
      }
      if (j.result) {
        for (const [k, v] of Object.entries(j.result.metrics || {})) rows.push([k, fmt(v)]);
        for (const k of ['best_epoch', 'epochs', 'steps', 'engine', 'stopped_early']) {
          if (j.result[k] !== undefined) rows.push([k, fmt(j.result[k])]);
        }
      }
      if (j.error) rows.push(['Error', typeof j.error === 'object' ? `${j.error.type || ''}: ${j.error.message || ''}` : String(j.error)]);
      rows.push(['Created', when(j.created_at)], ['Started', when(j.started_at)], ['Finished', when(j.finished_at)]);
      facts.replaceChildren(...rows.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: String(v) }))));
      const shape = `${j.status} ${j.cancel_requested} ${j.links && j.links.mlflow_run}`;
      if (shape === state.actions) return; // keep the buttons (and the focus on one)
      state.actions = shape;
      actions.replaceChildren();
      if (!TERMINAL.has(j.status) && !j.cancel_requested) {
        const b = el('button', { type: 'button', class: 'danger', id: 'cancel-job', text: 'Cancel job' });
        b.addEventListener('click', async () => {
          await cancelJob(j, b);
          try { drawFacts(await api(`v1/jobs/${enc(id)}`)); } catch (e) { /* shown */ }
        });
        actions.append(b);
      }
      if (j.links && j.links.mlflow_run) {
        actions.append(el('a', { href: j.links.mlflow_run, id: 'mlflow-link', rel: 'noopener noreferrer',
                                 target: '_blank', text: 'Open its run in MLflow' }));
      }
    };
    const drawLayerTable = (metrics) => {
      const byLayer = {};
      for (const [k, v] of Object.entries(metrics || {})) {
        const m = /^layer(\d+)_(\w+)$/.exec(k);
        if (m) (byLayer[m[1]] = byLayer[m[1]] || {})[m[2]] = v;
      }
      const ids = Object.keys(byLayer).sort((a, b) => a - b);
      layerTable.replaceChildren(ids.length ? table('Latest per layer',
        ['Layer', ['Dead fraction', 'num'], ['Update / weight', 'num'], ['Weight norm', 'num']],
        ids.map((i) => el('tr', {}, el('td', { text: `layer ${i}` }),
          el('td', { class: 'num', text: fmt(byLayer[i].dead_fraction) }),
          el('td', { class: 'num', text: fmt(byLayer[i].update_ratio) }),
          el('td', { class: 'num', text: fmt(byLayer[i].weight_norm) }))), { id: 'layer-table' }) : '');
    };
    const addEvent = (e) => {
      history.append(el('tr', {}, el('td', { text: when(e.at) }), el('td', { text: e.from_status || '–' }),
        el('td', {}, badge(e.to_status)), el('td', { class: 'num', text: e.attempt }), el('td', { text: e.reason || '' })));
    };
    const loadCurves = async () => {
      const m = await api(`v1/jobs/${enc(id)}/metrics`);
      if (!current.alive) return;
      const last = {};
      for (const [name, points] of Object.entries(m.metrics)) {
        for (const p of points) plot(name, p.step, p.value);
        const mm = /^weights\/(layer\d+_\w+)$/.exec(name);
        if (mm && points.length) last[mm[1]] = points[points.length - 1].value;
      }
      redraw();
      if (Object.keys(last).length) drawLayerTable(last);
    };
    const loadFiles = async () => {
      const listing = await api(`v1/jobs/${enc(id)}/artifacts`);
      if (!current.alive) return;
      drawArtifacts(artifacts, id, listing.artifacts);
      const reports = listing.artifacts.filter((a) => /^gradcheck\/.*\.json$/.test(a.path)).slice(-50);
      const loaded = [];
      await eachLimited(reports, 4, async (a) => {
        const blob = await api(`v1/jobs/${enc(id)}/artifacts/${a.path.split('/').map(enc).join('/')}`);
        loaded.push(blob instanceof Blob ? JSON.parse(await blob.text()) : blob);
      });
      if (!current.alive) return;
      loaded.sort((a, b) => a.step - b.step);
      drawChecks(checks, loaded);
    };

    drawFacts(job);
    const past = await api(`v1/jobs/${enc(id)}/events`);
    if (!current.alive) return;
    past.forEach(addEvent);
    let seen = past.length ? past[past.length - 1].id : 0;
    await loadCurves().catch(() => {});
    if (state.job.progress) drawLayerTable(state.job.progress.metrics);
    if (TERMINAL.has(job.status)) { await loadFiles(); return; }
    checks.replaceChildren(el('p', { class: 'muted', text: 'Shown once the job has ended (its reports are files of its run).' }));
    artifacts.replaceChildren(el('p', { class: 'muted', text: 'Listed once the job has ended.' }));

    // Progress (over the stream) carries the latest epoch only, a heartbeat apart; the
    // curves' every epoch and the per-layer diagnostics come from the run's metrics.
    every(REFRESH_MS, () => { if (!TERMINAL.has(state.job.status)) loadCurves().catch(() => {}); }, current);
    const controller = new AbortController();
    current.stops.push(() => controller.abort());
    const onEvent = async (kind, data) => {
      if (!current.alive) return;
      if (kind === 'status') {
        if (data.id > seen) { seen = data.id; addEvent(data); }
        drawFacts(await api(`v1/jobs/${enc(id)}`));
      } else if (kind === 'progress') {
        const metrics = data.metrics || {};
        let added = false;
        for (const [name, value] of Object.entries(metrics)) added = plot(name, data.epoch, value) || added;
        if (added) redraw();
        drawLayerTable(metrics);
        drawFacts({ ...state.job, status: 'running', progress: data });
        announce(`epoch ${data.epoch}`);
      } else if (kind === 'end') {
        drawFacts(await api(`v1/jobs/${enc(id)}`));
        await loadCurves().catch(() => {});
        await loadFiles().catch(() => {});
        announce(`job ${data.status}`);
      }
    };
    try {
      await stream(`v1/jobs/${enc(id)}/events`, (k, d) => { onEvent(k, d); }, controller.signal);
    } catch (e) {
      if (!current.alive || controller.signal.aborted) return;
      // no stream (e.g. too many open): poll the job instead
      every(REFRESH_MS, async () => {
        const j = await api(`v1/jobs/${enc(id)}`);
        drawFacts(j);
        if (j.progress) await onEvent('progress', j.progress);
      }, current);
    }
  }

  function drawChecks(box, reports) {
    if (!reports.length) { box.replaceChildren(el('p', { class: 'muted', text: 'No gradient-check report.' })); return; }
    const rows = [];
    for (const r of reports) {
      for (const t of r.tensors) {
        rows.push(el('tr', { class: t.passed ? '' : 'failed' },
          el('td', { class: 'num', text: r.step }), el('td', { text: t.name }), el('td', { text: t.shape.join(' × ') }),
          el('td', { class: 'num', text: fmt(t.autograd_rel) }), el('td', { class: 'num', text: fmt(t.fd_rel) }),
          el('td', { class: 'num', text: t.fd_coordinates }), el('td', { text: t.passed ? 'passed' : 'FAILED' })));
      }
    }
    const summary = reports.map((r) => `step ${r.step}: ${r.passed ? 'passed' : 'FAILED'} (batch ${r.batch}, ` +
      `tolerance ${r.tolerance}, finite differences ${r.fd_tolerance})`).join('; ');
    box.replaceChildren(el('p', { class: 'muted', text: summary }),
      table('Manual gradients against autograd and central finite differences (float64), per tensor',
        [['Step', 'num'], 'Tensor', 'Shape', ['vs autograd (rel.)', 'num'], ['vs finite diff. (rel.)', 'num'],
         ['FD coordinates', 'num'], 'Result'], rows, { id: 'gradcheck-table' }));
  }

  // Files come through gradq's API under the key: fetched, then handed over as a blob URL.
  function drawArtifacts(box, id, files) {
    if (!files.length) { box.replaceChildren(el('p', { class: 'muted', text: 'No files.' })); return; }
    const url = (a) => `v1/jobs/${enc(id)}/artifacts/${a.path.split('/').map(enc).join('/')}`;
    const rows = files.map((a) => {
      const b = el('button', { type: 'button', text: 'Download', 'aria-label': `Download ${a.path}` });
      b.addEventListener('click', async () => {
        const blob = await api(url(a));
        const link = el('a', { href: URL.createObjectURL(blob), download: a.path.split('/').pop() });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      });
      return el('tr', {}, el('td', { class: 'name', text: a.path }), el('td', { class: 'num', text: a.size === null ? '–' : fmt(a.size) }), el('td', {}, b));
    });
    box.replaceChildren(table('The files of the job\'s run', ['Path', ['Bytes', 'num'], ''], rows, { id: 'artifact-table' }));
    const plot = files.find((a) => a.path === 'plots/learning_curve.png');
    if (plot) {
      api(url(plot)).then((blob) => {
        box.append(el('img', { class: 'artifact', src: URL.createObjectURL(blob), alt: 'The learning-curve plot the job saved' }));
      }).catch(() => {});
    }
  }

  // --- a sweep ------------------------------------------------------------------------------

  const TRIAL_STYLE = {
    succeeded: { color: '#188038', point: 'circle' }, pruned: { color: '#6e40c9', point: 'crossRot' },
    failed: { color: '#c5221f', point: 'triangle' }, running: { color: '#0b57d0', point: 'rect' },
    cancelled: { color: '#5f6368', point: 'dash' }, queued: { color: '#e37400', point: 'rectRot' },
  };
  // A parameter's value as a number on its axis: numbers as they are, anything else (a
  // choice of lists, a string) as its index among the values seen, with its label.
  function axisOf(values) {
    const numeric = values.every((v) => typeof v === 'number');
    if (numeric) {
      const positive = values.every((v) => v > 0);
      const spread = positive && values.length ? Math.max(...values) / Math.min(...values) : 1;
      return { numeric, log: spread > 50, at: (v) => v, label: (v) => fmt(v, 3) };
    }
    const labels = [...new Set(values.map((v) => JSON.stringify(v)))].sort();
    return { numeric, log: false, at: (v) => labels.indexOf(JSON.stringify(v)), label: (i) => labels[i] ?? '', labels };
  }

  const paramText = (params) => Object.entries(params || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(', ');

  async function sweepView(id, current) {
    const head = el('h1', { id: 'sweep-name' });
    const actions = el('div', { class: 'actions' });
    const facts = el('dl', { class: 'facts', id: 'sweep-facts' });
    const scatters = el('div', { class: 'grid2', id: 'scatters' });
    const [parBox, parCanvas] = chartBox('parallel', 'Parallel coordinates: each trial a line across its parameters and objective', true);
    const [histBox, histCanvas] = chartBox('history', 'Objective of each ended trial, and the best so far');
    const trialsBox = el('div', {});
    show(el('p', {}, el('a', { href: '#/sweeps', text: '← Sweeps' })), head,
      el('p', { id: 'page-alert', class: 'errors', role: 'alert', hidden: true }), actions, facts,
      el('h2', { text: 'Objective against each parameter' }), scatters,
      el('h2', { text: 'Parallel coordinates' }), parBox,
      el('h2', { text: 'Objective over the sweep' }), histBox,
      el('h2', { text: 'Trials' }), trialsBox);
    const charts = {};
    current.stops.push(() => { for (const c of Object.values(charts)) c.destroy(); });
    const load = async () => {
      const s = await api(`v1/sweeps/${enc(id)}`);
      const trials = (await api(`v1/sweeps/${enc(id)}/trials?limit=1000`)).items;
      if (!current.alive) return;
      const objective = (s.spec.objective && s.spec.objective.metric) || 'objective';
      head.replaceChildren(s.name, ' ', badge(s.status));
      const counts = Object.entries(s.counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(', ');
      const rows = [['Id', s.id], ['Status', s.status], ['Trials', `${s.trials} made of ${s.total_trials}`],
        ['Trials by status', counts || 'none yet'], ['Objective', `${objective} (${(s.spec.objective || {}).mode || ''})`]];
      if (s.best) rows.push(['Best so far', `${fmt(s.best.objective)} — trial ${s.best.trial}: ${paramText(s.best.params)}`]);
      if (s.error) rows.push(['Error', s.error]);
      rows.push(['Created', when(s.created_at)], ['Finished', when(s.finished_at)]);
      facts.replaceChildren(...rows.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: String(v) }))));
      if (s.best) facts.append(el('div', {}, el('dt', { text: 'Best trial' }), el('dd', {}, el('a', { href: `#/job/${enc(s.best.job_id)}`, text: `trial ${s.best.trial}` }))));
      actions.replaceChildren();
      if (!['succeeded', 'failed', 'cancelled'].includes(s.status) && !s.cancel_requested) {
        const b = el('button', { type: 'button', class: 'danger', text: 'Cancel sweep' });
        b.addEventListener('click', async () => { b.disabled = true; await api(`v1/sweeps/${enc(id)}/cancel`, { method: 'POST' }); load(); });
        actions.append(b);
      }
      drawSweepCharts(s, trials, objective, charts, scatters, parCanvas, histCanvas);
      trialsBox.replaceChildren(table('Trials by number', [['Trial', 'num'], 'Status', ['Epoch', 'num'], [objective, 'num'], 'Parameters'],
        trials.map((t) => el('tr', { 'data-status': t.status },
          el('td', { class: 'num' }, el('a', { href: `#/job/${enc(t.id)}`, text: t.trial })),
          el('td', {}, badge(t.status)), el('td', { class: 'num', text: fmt(t.epoch) }),
          el('td', { class: 'num', text: fmt(t.objective) }),
          el('td', { class: 'name', text: paramText(t.params) }))),
        { id: 'trials' }));
      return s;
    };
    const s = await load();
    if (s && !['succeeded', 'failed', 'cancelled'].includes(s.status)) every(REFRESH_MS, () => load().catch(() => {}), current);
  }

  function drawSweepCharts(s, trials, objective, charts, scatters, parCanvas, histCanvas) {
    const names = Object.keys(s.spec.space || {});
    const ended = trials.filter((t) => t.objective !== null && t.objective !== undefined);
    const statuses = [...new Set(ended.map((t) => t.status))];
    for (const name of names) {
      const axis = axisOf(trials.map((t) => t.params[name]).filter((v) => v !== undefined));
      const datasets = statuses.map((st) => ({
        label: st, pointStyle: TRIAL_STYLE[st].point, borderColor: TRIAL_STYLE[st].color,
        backgroundColor: TRIAL_STYLE[st].color, pointRadius: 5,
        data: ended.filter((t) => t.status === st).map((t) => ({ x: axis.at(t.params[name]), y: t.objective, trial: t.trial })),
      }));
      const x = { type: axis.log ? 'logarithmic' : 'linear', title: { display: true, text: name } };
      if (!axis.numeric) {
        Object.assign(x, { min: -0.5, max: axis.labels.length - 0.5, ticks: { callback: (v) => axis.label(v) },
                           afterBuildTicks: (scale) => { scale.ticks = axis.labels.map((_, i) => ({ value: i })); } });
      }
      const key = `scatter:${name}`;
      if (!charts[key]) {
        const [boxEl, canvas] = chartBox(`scatter-${names.indexOf(name)}`, `${objective} against ${name}, one point per ended trial; pruned trials drawn as crosses`);
        scatters.append(boxEl);
        charts[key] = new window.Chart(canvas, { type: 'scatter', data: { datasets },
          options: { animation: false, responsive: true, maintainAspectRatio: false,
            plugins: { title: { display: true, text: `${objective} vs ${name}` }, legend: { position: 'bottom', labels: { usePointStyle: true } },
                       tooltip: { callbacks: { label: (c) => `trial ${c.raw.trial}: ${fmt(c.raw.y)} at ${axis.label(c.raw.x)}` } } },
            scales: { x, y: { title: { display: true, text: objective } } } } });
      } else {
        charts[key].data.datasets = datasets;
        charts[key].options.scales.x = x;
        charts[key].update('none');
      }
    }
    // Parallel coordinates: an axis per parameter and the objective, each scaled to 0–1
    // over the trials; a line per trial, coloured by status, pruned ones dashed.
    const axes = [...names, objective];
    const values = (t, n) => (n === objective ? t.objective : t.params[n]);
    const ranges = [];
    const scale = axes.map((n) => {
      const a = axisOf(ended.map((t) => values(t, n)));
      const xs = ended.map((t) => a.at(values(t, n))).map((v) => (a.log ? Math.log10(v) : v));
      const lo = Math.min(...xs);
      const hi = Math.max(...xs);
      const shown = ended.map((t) => values(t, n));
      ranges.push(a.numeric && shown.length ? `${fmt(Math.min(...shown), 3)} – ${fmt(Math.max(...shown), 3)}${a.log ? ' (log)' : ''}`
                                            : (a.labels || []).join(' · '));
      return (v) => { const u = a.at(v); const w = a.log ? Math.log10(u) : u; return hi > lo ? (w - lo) / (hi - lo) : 0.5; };
    });
    const lines = ended.map((t) => ({
      label: `trial ${t.trial} (${t.status})`, borderColor: TRIAL_STYLE[t.status].color,
      borderDash: t.status === 'pruned' ? [6, 4] : [], borderWidth: 1.5, pointRadius: 2,
      data: axes.map((n, i) => ({ x: i, y: scale[i](values(t, n)), v: values(t, n) })),
    }));
    const parOptions = { animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      plugins: { title: { display: true, text: 'Trials across parameters (dashed: pruned)' }, legend: { display: false },
                 tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${axes[c.raw.x]} = ${fmt(c.raw.v)}` } } },
      scales: { x: { type: 'linear', min: 0, max: axes.length - 1, ticks: { callback: (v) => (axes[v] === undefined ? '' : [axes[v], ranges[v]]) },
                     afterBuildTicks: (scale) => { scale.ticks = axes.map((_, i) => ({ value: i })); } },
                y: { min: 0, max: 1, ticks: { display: false }, title: { display: true, text: 'low → high' } } } };
    if (!charts.parallel) charts.parallel = new window.Chart(parCanvas, { type: 'line', data: { datasets: lines }, options: parOptions });
    else { charts.parallel.data.datasets = lines; charts.parallel.options = parOptions; charts.parallel.update('none'); }
    const hist = [
      { label: objective, data: s.history.map((h, i) => ({ x: i + 1, y: h.objective })), showLine: false,
        borderColor: '#0b57d0', backgroundColor: '#0b57d0', pointRadius: 4 },
      { label: 'best so far', data: s.history.filter((h) => h.best !== null).map((h) => ({ x: s.history.indexOf(h) + 1, y: h.best })),
        borderColor: '#188038', backgroundColor: '#188038', stepped: true, pointRadius: 0 }];
    if (!charts.history) {
      charts.history = new window.Chart(histCanvas, { type: 'line', data: { datasets: hist },
        options: { animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
          plugins: { legend: { position: 'bottom' } },
          scales: { x: { type: 'linear', ticks: { precision: 0 }, title: { display: true, text: 'trials ended' } }, y: { title: { display: true, text: objective } } } } });
    } else { charts.history.data.datasets = hist; charts.history.update('none'); }
  }

  // --- submit -------------------------------------------------------------------------------

  // The line of `path` (e.g. `optimizer.lr`, `model.hidden[1]`, `space["optimizer.lr"]`) in
  // the YAML `text`: each key found below its parent's line, in block or flow style. -1:
  // not found (the problem is then listed without a line).
  function lineOf(text, path) {
    const tokens = [];
    for (const m of path.matchAll(/\["([^"]*)"\]|\[(\d+)\]|([^.[\]]+)/g)) {
      if (m[1] !== undefined) tokens.push(m[1]);
      else if (m[3] !== undefined) tokens.push(m[3]);
    }
    const lines = text.split('\n');
    let from = 0;
    let indent = -1;
    let found = -1;
    for (const t of tokens) {
      const esc = t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      const pattern = new RegExp(`(^|[{,\\s])(["']?)${esc}\\2\\s*:`);
      let hit = -1;
      for (let i = from; i < lines.length; i++) {
        const line = lines[i].replace(/\s#.*$/, '');
        if (!line.trim() || line.trim().startsWith('#')) continue;
        const ind = line.search(/\S/);
        if (found >= 0 && i > from && ind <= indent) break;
        if (pattern.test(line)) { hit = i; indent = ind; break; }
      }
      if (hit < 0) break;
      found = hit;
      from = hit;
    }
    return found;
  }

  function submitView() {
    const text = el('textarea', { id: 'spec-text', name: 'spec', spellcheck: 'false',
                                  'aria-describedby': 'spec-help spec-errors', required: true });
    const file = el('input', { id: 'spec-file', type: 'file', accept: '.yaml,.yml,.json,application/json,text/yaml' });
    const kind = el('select', { id: 'spec-kind', name: 'kind' },
      el('option', { value: 'auto', text: 'as its contents say (a sweep has base and space)' }),
      el('option', { value: 'job', text: 'a job' }), el('option', { value: 'sweep', text: 'a sweep' }));
    const errors = el('div', { id: 'spec-errors', 'aria-live': 'assertive' });
    const button = el('button', { type: 'submit', class: 'primary', id: 'spec-submit', text: 'Submit' });
    const form = el('form', { id: 'submit-form', 'aria-labelledby': 'submit-title' },
      el('div', { class: 'field' }, el('label', { for: 'spec-file' }, 'Upload a YAML or JSON file', file)),
      el('div', { class: 'field' }, el('label', { for: 'spec-text' }, 'Job or sweep spec (YAML)', text)),
      el('p', { id: 'spec-help', class: 'muted', text: 'A job needs at least a dataset, e.g. "dataset: iris". ' +
        'A sweep has base, space, search and objective (examples/digits-sweep.yaml).' }),
      el('div', { class: 'field' }, el('label', { for: 'spec-kind' }, 'Submit it as', kind)),
      errors, el('div', { class: 'actions' }, button));
    show(el('h1', { id: 'submit-title', text: 'Submit a job or a sweep' }), form);
    file.addEventListener('change', async () => {
      const f = file.files && file.files[0];
      if (f) { text.value = await f.text(); text.focus(); }
    });
    const goTo = (line) => {
      const lines = text.value.split('\n');
      const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
      text.focus();
      text.setSelectionRange(start, start + (lines[line] || '').length);
    };
    const problems = (title, items) => {
      text.setAttribute('aria-invalid', 'true');
      errors.replaceChildren(el('div', { class: 'errors', role: 'alert' }, el('strong', { text: title }),
        el('ul', {}, items.map(({ field, message, line }) => el('li', { 'data-field': field || '' },
          field ? el('code', { text: field }) : null, field ? ': ' : '', message,
          line >= 0 ? ' ' : null,
          line >= 0 ? el('button', { type: 'button', class: 'goto', text: `line ${line + 1}`,
                                     'aria-label': `Go to line ${line + 1}`, onclick: () => goTo(line) }) : null)))));
    };
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      errors.replaceChildren();
      text.removeAttribute('aria-invalid');
      let spec;
      try {
        spec = window.jsyaml.load(text.value);
      } catch (e) {
        const mark = e.mark || {};
        const reason = e.reason || e.message;
        problems('The text is not valid YAML', [{ field: null, message: `line ${(mark.line ?? 0) + 1}, column ${(mark.column ?? 0) + 1}: ${reason}`, line: mark.line ?? -1 }]);
        return;
      }
      if (!spec || typeof spec !== 'object' || Array.isArray(spec)) {
        problems('Not a spec', [{ field: null, message: 'a job or sweep spec is a mapping (key: value lines)', line: -1 }]);
        return;
      }
      const isSweep = kind.value === 'sweep' || (kind.value === 'auto' && 'base' in spec && 'space' in spec);
      button.disabled = true;
      try {
        const made = await api(isSweep ? 'v1/sweeps' : 'v1/jobs', { method: 'POST', json: spec });
        location.hash = isSweep ? `#/sweep/${enc(made.id)}` : `#/job/${enc(made.id)}`;
      } catch (e) {
        if (!(e instanceof ApiFailure) || e.status === 401) { if (!(e instanceof ApiFailure)) problems('Not sent', [{ field: null, message: e.message, line: -1 }]); return; }
        const body = e.body || {};
        const list = body.errors || (body.error ? [{ field: body.error.field, message: body.error.message }] : [{ field: null, message: e.message }]);
        problems(`Refused (HTTP ${e.status}): ${list.length} problem${list.length === 1 ? '' : 's'}`,
          list.map((p) => ({ ...p, line: p.field ? lineOf(text.value, p.field) : -1 })));
      } finally {
        button.disabled = false;
      }
    });
  }

  window.addEventListener('hashchange', () => { route(); main.focus({ preventScroll: true }); });
  updateWho();
  route();
})();
