// A run's DAG as SVG: steps in layers (a step sits one layer right of its deepest
// dependency), ordered inside a layer by the mean position of their dependencies.
import { s } from './dom.js';

const NODE_W = 200;
const NODE_H = 46;
const GAP_X = 56;
const GAP_Y = 18;
const PAD = 12;

function layers(steps) {
  const byId = new Map(steps.map((step) => [step.stepId, step]));
  const depth = new Map();
  const visiting = new Set();
  function depthOf(id) {
    if (depth.has(id)) return depth.get(id);
    // A cycle or an unknown dependency cannot come from a validated plan; draw it flat.
    if (visiting.has(id) || !byId.has(id)) return 0;
    visiting.add(id);
    const deps = byId.get(id).dependsOn || [];
    const d = deps.length ? 1 + Math.max(...deps.map(depthOf)) : 0;
    visiting.delete(id);
    depth.set(id, d);
    return d;
  }
  const rows = [];
  for (const step of steps) {
    const d = depthOf(step.stepId);
    (rows[d] = rows[d] || []).push(step);
  }
  const position = new Map();
  return rows.filter(Boolean).map((row) => {
    const keyed = row.map((step, i) => {
      const known = (step.dependsOn || []).filter((dep) => position.has(dep));
      const mean = known.length
        ? known.reduce((sum, dep) => sum + position.get(dep), 0) / known.length : i;
      return { step, mean, i };
    });
    keyed.sort((a, b) => a.mean - b.mean || a.i - b.i);
    keyed.forEach((k, slot) => position.set(k.step.stepId, slot));
    return keyed.map((k) => k.step);
  });
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * Draw ``steps`` ([{stepId, kind, dependsOn}]) as an SVG; the returned object's
 * ``update(states)`` recolours the nodes from a Map of stepId -> {status, substatus}.
 */
export function drawDag(steps) {
  const rows = layers(steps);
  const tallest = Math.max(1, ...rows.map((row) => row.length));
  const width = PAD * 2 + rows.length * NODE_W + Math.max(0, rows.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const at = new Map();
  rows.forEach((row, col) => {
    const offset = ((tallest - row.length) * (NODE_H + GAP_Y)) / 2;
    row.forEach((step, slot) => {
      at.set(step.stepId, {
        x: PAD + col * (NODE_W + GAP_X),
        y: PAD + offset + slot * (NODE_H + GAP_Y),
      });
    });
  });
  const svg = s('svg', {
    class: 'dag', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': 'steps of the run and their dependencies',
  });
  const edges = s('g', { class: 'edges' });
  for (const step of steps) {
    const to = at.get(step.stepId);
    for (const dep of step.dependsOn || []) {
      const from = at.get(dep);
      if (!from || !to) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      edges.append(s('path', {
        class: 'edge', 'data-from': dep, 'data-to': step.stepId,
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
      }));
    }
  }
  svg.append(edges);
  const nodes = new Map();
  for (const step of steps) {
    const p = at.get(step.stepId);
    const label = s('text', { class: 'status', x: 10, y: 36 }, 'PENDING');
    const node = s('g', {
      class: 'step status-PENDING', 'data-step-id': step.stepId,
      transform: `translate(${p.x},${p.y})`,
    },
    s('title', {}, `${step.stepId} (${step.kind})`),
    s('rect', { width: NODE_W, height: NODE_H, rx: 6 }),
    s('text', { class: 'name', x: 10, y: 18 }, clip(step.stepId, 27)),
    label);
    nodes.set(step.stepId, { node, label });
    svg.append(node);
  }
  return {
    svg,
    update(states) {
      for (const [id, { node, label }] of nodes) {
        const state = states.get(id) || { status: 'PENDING' };
        const shown = state.substatus ? `${state.status} · ${state.substatus}` : state.status;
        node.setAttribute('class', `step status-${state.status}${state.substatus ? ` sub-${state.substatus}` : ''}`);
        node.setAttribute('data-status', state.status);
        label.textContent = shown;
      }
    },
  };
}
