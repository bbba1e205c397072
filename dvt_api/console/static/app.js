// The console's views: login, the tenant's runs, and one run (DAG, steps, events, signals).
import { api, ApiError, followRun, runPath, session } from './api.js';
import { drawDag } from './dag.js';
import { h, put } from './dom.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const RUN_STATUSES = ['PENDING', 'APPROVED', 'RUNNING', 'PAUSED', 'COMPLETED', 'FAILED', 'CANCELLED'];
const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);
// What each event says about a step or the run; the snapshot is re-read after run events.
const STEP_EVENTS = {
  StepStarted: { status: 'RUNNING', substatus: null },
  StepAwaitingApproval: { status: 'RUNNING', substatus: 'AWAITING_APPROVAL' },
  StepCompleted: { status: 'SUCCESS', substatus: null },
  StepFailed: { status: 'FAILED', substatus: null },
  StepSkipped: { status: 'SKIPPED', substatus: null },
};
const RUN_EVENTS = {
  RunApproved: 'APPROVED', RunStarted: 'RUNNING', RunPaused: 'PAUSED', RunResumed: 'RUNNING',
  RunCompleted: 'COMPLETED', RunFailed: 'FAILED', RunCancelled: 'CANCELLED',
};

let me = null;
let stopStream = null;

function roles() { return new Set(me ? me.roles : []); }

function problemText(error) {
  return error instanceof ApiError ? error.message : `network error: ${error.message || error}`;
}

function showWho() {
  if (!me) { put(who); return; }
  put(who,
    h('span', { class: 'tenant', title: 'tenant' }, me.tenantId), ' ',
    h('span', { class: 'key', title: 'API key id' }, me.keyId), ' ',
    h('span', { class: 'roles', id: 'roles' }, me.roles.join(', ')), ' ',
    h('button', { type: 'button', id: 'logout', onclick: logout }, 'Log out'));
}

function logout() {
  session.clear();
  me = null;
  showWho();
  location.hash = '#/login';
}

function loginView(message) {
  const input = h('input', {
    type: 'password', id: 'api-key', name: 'key', autocomplete: 'off', required: true,
    placeholder: 'dvt_…', 'aria-label': 'API key',
  });
  const error = h('p', { class: 'error', id: 'login-error', role: 'alert' }, message || '');
  const form = h('form', { id: 'login', class: 'card' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'The key is kept in this tab only (sessionStorage).'),
    h('label', { for: 'api-key' }, 'API key'), input,
    h('button', { type: 'submit' }, 'Sign in'), error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    session.set(input.value.trim());
    try {
      me = await api('/v1/whoami');
      showWho();
      location.hash = '#/runs';
    } catch (err) {
      session.clear();
      put(error, problemText(err));
    }
  });
  put(main, form);
  input.focus();
}

function parseQuery(text) {
  const params = new URLSearchParams(text || '');
  return {
    status: params.getAll('status'),
    planId: params.get('planId') || '',
    label: params.getAll('label'),
  };
}

function labelChips(labels) {
  return h('span', { class: 'labels' },
    Object.entries(labels || {}).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`)));
}

function runLink(runId) {
  return h('a', { href: `#/run/${encodeURIComponent(runId)}`, class: 'run-link' }, runId);
}

function statusBadge(status, substatus, id) {
  return h('span', { class: `badge status-${status}`, id },
    substatus ? `${status} · ${substatus}` : status);
}

async function runsView(queryText) {
  const filters = parseQuery(queryText);
  const status = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '' }, 'any status'),
    RUN_STATUSES.map((st) => h('option', { value: st, selected: filters.status.includes(st) }, st)));
  const plan = h('input', { id: 'filter-plan', name: 'planId', value: filters.planId, placeholder: 'plan id' });
  const label = h('input', {
    id: 'filter-label', name: 'label', value: filters.label.join(' '),
    placeholder: 'key:value key2:value2',
  });
  const form = h('form', { id: 'filters', class: 'filters' },
    status, plan, label, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const params = new URLSearchParams();
    if (status.value) params.append('status', status.value);
    if (plan.value.trim()) params.append('planId', plan.value.trim());
    for (const pair of label.value.split(/\s+/).filter(Boolean)) params.append('label', pair);
    location.hash = `#/runs?${params}`;
  });
  const body = h('tbody', { id: 'runs-body' });
  const table = h('table', { id: 'runs', class: 'grid' },
    h('thead', {}, h('tr', {}, ['run', 'plan', 'status', 'labels', 'created', 'updated'].map((t) => h('th', {}, t)))),
    body);
  const message = h('p', { class: 'error', id: 'runs-error', role: 'alert' });
  const more = h('button', { type: 'button', id: 'more', hidden: true }, 'More');
  put(main, h('h1', {}, 'Runs'), form, message, table, more);

  let cursor = null;
  async function page() {
    try {
      const answer = await api('/v1/runs', {
        query: { status: filters.status, planId: filters.planId, label: filters.label, limit: 50, cursor },
      });
      for (const run of answer.items) {
        body.append(h('tr', { 'data-run-id': run.runId },
          h('td', {}, runLink(run.runId)),
          h('td', {}, `${run.planId} v${run.planVersion}`),
          h('td', {}, statusBadge(run.status, run.substatus)),
          h('td', {}, labelChips(run.labels)),
          h('td', {}, run.createdAt),
          h('td', {}, run.updatedAt)));
      }
      if (!answer.items.length && !cursor) body.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No runs match.')));
      cursor = answer.nextCursor;
      more.hidden = !cursor;
    } catch (err) {
      put(message, problemText(err));
    }
  }
  more.addEventListener('click', page);
  await page();
}

function planSteps(planDoc, snapshot) {
  const steps = planDoc && Array.isArray(planDoc.steps) ? planDoc.steps : null;
  if (steps) {
    return steps.map((st) => ({ stepId: String(st.stepId), kind: String(st.kind || ''), dependsOn: (st.dependsOn || []).map(String) }));
  }
  // Without the plan (not readable by this key) the steps are known, their edges are not.
  return snapshot.steps.map((st) => ({ stepId: st.stepId, kind: '', dependsOn: [] }));
}

function signalButton(type, text, send, stepId) {
  return h('button', {
    type: 'button', class: `signal signal-${type}`, 'data-signal': type,
    'data-step-id': stepId, onclick: () => send(type, stepId),
  }, text);
}

async function runView(runId) {
  const message = h('p', { class: 'notice', id: 'run-message', role: 'status' });
  put(main, h('p', {}, h('a', { href: '#/runs' }, '← runs')), message);
  let snapshot;
  try {
    snapshot = await api(runPath(runId));
  } catch (err) {
    put(message, problemText(err));
    return;
  }
  let planDoc = null;
  if (snapshot.planRef && snapshot.planRef.sha256) {
    try { planDoc = await api(`/v1/plans/${encodeURIComponent(snapshot.planRef.sha256)}`); } catch { planDoc = null; }
  }
  const steps = planSteps(planDoc, snapshot);
  const states = new Map(snapshot.steps.map((st) => [st.stepId, { status: st.status, substatus: st.substatus }]));
  let runStatus = { status: snapshot.status, substatus: snapshot.substatus };
  const dag = drawDag(steps);
  const statusSlot = h('span', { id: 'run-status-slot' });
  const runButtons = h('div', { class: 'actions', id: 'run-actions' });
  const stepBody = h('tbody', { id: 'steps-body' });
  const eventBody = h('tbody', { id: 'events-body' });
  const streamState = h('span', { class: 'muted', id: 'stream-state' }, 'connecting');
  const can = roles();

  async function send(type, stepId) {
    put(message, `${type}${stepId ? ` ${stepId}` : ''}: sending…`);
    try {
      const answer = await api(`${runPath(runId)}/signals`, { method: 'POST', body: { type, stepId } });
      put(message, `${type}${stepId ? ` ${stepId}` : ''}: ${answer.decision}`);
    } catch (err) {
      put(message, `${type}: ${problemText(err)}`);
    }
  }

  function renderRun() {
    put(statusSlot, statusBadge(runStatus.status, runStatus.substatus, 'run-status'));
    const buttons = [];
    const live = !TERMINAL.has(runStatus.status);
    if (can.has('operator') && live) {
      if (runStatus.status === 'PAUSED') buttons.push(signalButton('RESUME', 'Resume', send));
      else buttons.push(signalButton('PAUSE', 'Pause', send));
      buttons.push(signalButton('CANCEL', 'Cancel', send));
    }
    if (can.has('approver') && live && runStatus.status === 'PENDING' && snapshot.requiresApproval !== false) {
      buttons.push(signalButton('APPROVE_RUN', 'Approve run', send));
    }
    put(runButtons, buttons);
    dag.update(states);
    put(stepBody, steps.map((step) => {
      const state = states.get(step.stepId) || { status: 'PENDING' };
      const actions = [];
      if (live && can.has('operator')) {
        if (state.status === 'FAILED') actions.push(signalButton('RETRY_STEP', 'Retry', send, step.stepId));
        if (state.status === 'PENDING' || state.status === 'FAILED') actions.push(signalButton('SKIP_STEP', 'Skip', send, step.stepId));
      }
      // A noop step waiting in AWAITING_APPROVAL waits for a custom signal, not an approval.
      if (live && can.has('approver') && state.substatus === 'AWAITING_APPROVAL'
          && step.kind === 'approval') {
        actions.push(signalButton('APPROVE_STEP', 'Approve', send, step.stepId));
        actions.push(signalButton('REJECT_STEP', 'Reject', send, step.stepId));
      }
      return h('tr', { 'data-step-id': step.stepId },
        h('td', { class: 'step-id' }, step.stepId), h('td', {}, step.kind),
        h('td', { class: 'step-status' }, statusBadge(state.status, state.substatus)),
        h('td', { class: 'actions' }, actions));
    }));
  }

  let refreshing = null;
  let appliedSeq = 0;
  let stale = 0;
  function refreshSnapshot() {
    // Run events can change what the events alone do not say (substatus, skipped steps).
    if (refreshing) return;
    refreshing = api(runPath(runId)).then((fresh) => {
      // A snapshot read before the events already shown would take the screen back.
      if (fresh.lastEventSeq < appliedSeq) {
        if (stale < 10) { stale += 1; setTimeout(refreshSnapshot, 200); }
        return;
      }
      stale = 0;
      snapshot = fresh;
      runStatus = { status: fresh.status, substatus: fresh.substatus };
      for (const st of fresh.steps) states.set(st.stepId, { status: st.status, substatus: st.substatus });
      renderRun();
    }).catch(() => {}).finally(() => { refreshing = null; });
  }

  function onEvent(msg) {
    let event;
    try { event = JSON.parse(msg.data); } catch { return; }
    const type = event.eventType || msg.event;
    eventBody.append(h('tr', { 'data-run-seq': event.runSeq },
      h('td', {}, event.runSeq), h('td', {}, type), h('td', {}, event.stepId || ''),
      h('td', {}, event.persistedAt || event.emittedAt || ''),
      h('td', { class: 'payload' }, JSON.stringify(event.payload || {}).slice(0, 300))));
    // The stream replays the run from its start: what the snapshot already holds is not
    // applied again, so a replayed StepStarted never shows a finished step as running.
    if (!(event.runSeq > snapshot.lastEventSeq)) { renderRun(); return; }
    appliedSeq = Math.max(appliedSeq, event.runSeq);
    if (STEP_EVENTS[type] && event.stepId) states.set(event.stepId, { ...STEP_EVENTS[type] });
    if (RUN_EVENTS[type]) {
      runStatus = { status: RUN_EVENTS[type], substatus: null };
      refreshSnapshot();
    }
    renderRun();
  }

  put(main,
    h('p', {}, h('a', { href: '#/runs' }, '← runs')),
    h('h1', {}, 'Run ', h('span', { id: 'run-id' }, snapshot.runId)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'status'), h('dd', {}, statusSlot),
      h('dt', {}, 'plan'), h('dd', { id: 'run-plan' }, `${snapshot.planId} v${snapshot.planVersion}`),
      h('dt', {}, 'engine'), h('dd', {}, snapshot.engine || ''),
      h('dt', {}, 'labels'), h('dd', { id: 'run-labels' }, labelChips(snapshot.labels)),
      h('dt', {}, 'created'), h('dd', {}, snapshot.createdAt || ''),
      h('dt', {}, 'stream'), h('dd', {}, streamState)),
    runButtons, message,
    h('section', { class: 'card dag-card' }, h('h2', {}, 'Steps'), h('div', { class: 'dag-scroll', id: 'dag' }, dag.svg)),
    h('table', { class: 'grid', id: 'steps' },
      h('thead', {}, h('tr', {}, ['step', 'kind', 'status', ''].map((t) => h('th', {}, t)))), stepBody),
    h('h2', {}, 'Events'),
    h('table', { class: 'grid', id: 'events' },
      h('thead', {}, h('tr', {}, ['runSeq', 'type', 'step', 'persisted', 'payload'].map((t) => h('th', {}, t)))), eventBody));
  renderRun();
  stopStream = followRun(runId, onEvent, (state, error) => {
    put(streamState, error ? `${state}: ${problemText(error)}` : state);
    if (state === 'ended') refreshSnapshot();
  });
}

async function route() {
  if (stopStream) { stopStream(); stopStream = null; }
  const hash = location.hash.replace(/^#/, '') || '/runs';
  if (!session.key()) { me = null; showWho(); loginView(); return; }
  if (hash === '/login') { loginView(); return; }
  if (!me) {
    try {
      me = await api('/v1/whoami');
    } catch (err) {
      session.clear();
      loginView(problemText(err));
      return;
    }
    showWho();
  }
  const [path, query] = hash.split('?', 2);
  if (path.startsWith('/run/')) {
    await runView(decodeURIComponent(path.slice('/run/'.length)));
  } else {
    await runsView(query);
  }
}

window.addEventListener('hashchange', route);
route();
