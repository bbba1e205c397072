// The API client of the console: bearer key from sessionStorage, problem+json errors, and a
// fetch-based SSE reader (EventSource cannot send an Authorization header).
const KEY = 'dvt.console.apiKey';
// Relative to the page, so the console keeps working behind a proxy that adds a path prefix.
const BASE = new URL('../', document.baseURI);

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, problem) {
    const code = (problem && problem.code) || `HTTP_${status}`;
    super(`${code}: ${(problem && (problem.detail || problem.title)) || 'request failed'}`);
    this.status = status;
    this.code = code;
  }
}

function url(path, query) {
  const target = new URL(path.replace(/^\//, ''), BASE);
  for (const [name, value] of Object.entries(query || {})) {
    for (const one of [].concat(value)) {
      if (one !== undefined && one !== null && one !== '') target.searchParams.append(name, one);
    }
  }
  return target;
}

function headers(extra) {
  return { Authorization: `Bearer ${session.key()}`, ...extra };
}

/** JSON from the API; ApiError with the problem's code when the answer is not 2xx. */
export async function api(path, { method = 'GET', query, body } = {}) {
  const answer = await fetch(url(path, query), {
    method,
    cache: 'no-store',
    headers: headers(body === undefined
      ? { Accept: 'application/json' }
      : { Accept: 'application/json', 'Content-Type': 'application/json' }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await answer.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!answer.ok) throw new ApiError(answer.status, data);
  return data;
}

export const runPath = (runId) => `/v1/runs/${encodeURIComponent(runId)}`;

const TERMINAL = new Set(['RunCompleted', 'RunFailed', 'RunCancelled']);
const FINAL_STATUSES = new Set([401, 403, 404]);

/**
 * Follow a run's event stream: ``onEvent({id, event, data})`` for each message, ``onState(s)``
 * with 'open', 'retrying', 'ended' or 'failed'. Reconnects with Last-Event-ID after a drop, so
 * no event is lost or repeated. Returns a function that stops following.
 */
export function followRun(runId, onEvent, onState) {
  let lastId = null;
  let retryMs = 1000;
  let stopped = false;
  let controller = null;

  function dispatch(msg) {
    if (msg.id !== null) lastId = msg.id;
    if (msg.retry !== null) retryMs = msg.retry;
    if (msg.data.length === 0) return false;
    onEvent({ id: lastId, event: msg.event || 'message', data: msg.data.join('\n') });
    return TERMINAL.has(msg.event);
  }

  async function once() {
    controller = new AbortController();
    const extra = { Accept: 'text/event-stream' };
    if (lastId !== null) extra['Last-Event-ID'] = lastId;
    const answer = await fetch(url(`${runPath(runId)}/stream`), {
      headers: headers(extra), cache: 'no-store', signal: controller.signal,
    });
    if (!answer.ok) {
      const problem = await answer.json().catch(() => null);
      throw new ApiError(answer.status, problem);
    }
    onState('open');
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let msg = { id: null, event: null, data: [], retry: null };
    let ended = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return ended;
      buffer += value;
      for (;;) {
        const at = buffer.search(/[\r\n]/);
        // A lone CR at the end may be the first half of CRLF: wait for the next chunk.
        if (at < 0 || (buffer[at] === '\r' && at === buffer.length - 1)) break;
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + (buffer[at] === '\r' && buffer[at + 1] === '\n' ? 2 : 1));
        if (line === '') {
          ended = dispatch(msg) || ended;
          msg = { id: null, event: null, data: [], retry: null };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) text = text.slice(1);
        if (field === 'data') msg.data.push(text);
        else if (field === 'event') msg.event = text;
        else if (field === 'id' && !text.includes('\0')) msg.id = text;
        else if (field === 'retry' && /^\d+$/.test(text)) msg.retry = Number(text);
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        if (await once()) { onState('ended'); return; }
      } catch (error) {
        if (stopped) return;
        if (error instanceof ApiError && FINAL_STATUSES.has(error.status)) {
          onState('failed', error);
          return;
        }
      }
      if (stopped) return;
      onState('retrying');
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();

  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}
