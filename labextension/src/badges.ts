/**
 * Shows what the server reads in each code cell, in the notebook itself: a badge with the step name
 * and its requests and limits on the cell that starts a step, a left edge in the step's colour on
 * every cell of it, a quiet mark on role cells (imports, parameters, ...), and a mark on cells the
 * server warns about (e.g. steps ordered as the notebook is, values that cannot cross a step).
 * Tags and `metadata.cellpipe` count alike: the server's reader decides, the browser only draws.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';

import type * as api from './api';
import type { CellsState } from './cellstate';

const STEP_CLASS = 'cp-step-cell';
const BADGE_CLASS = 'cp-step-badge';
const ROLE_CLASS = 'cp-role-mark';
const NOTE_CLASS = 'cp-cell-note';

/** Keeps one notebook's cell decorations in step with the server's view of its cells. */
export class StepDecorations {
  constructor(
    private readonly panel: NotebookPanel,
    private readonly state: CellsState
  ) {
    state.changed.connect(this.schedule, this);
    panel.content.model?.cells.changed.connect(this.schedule, this);
    this.schedule();
  }

  /** Redraw at most once per frame. */
  private schedule(): void {
    if (this.pending) {
      return;
    }
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.update();
    });
  }

  private update(): void {
    const view = this.state.view;
    if (!view) {
      return; // keep what is drawn until the server answers again
    }
    const nodes = new Map((view.graph?.nodes ?? []).map(node => [node.id, node]));
    const warnings = new Map<number, api.CellsView['problems']>();
    for (const problem of view.problems) {
      if (problem.cell !== null && problem.severity === 'warning') {
        warnings.set(problem.cell, [...(warnings.get(problem.cell) ?? []), problem]);
      }
    }
    this.panel.content.widgets.forEach((cell, index) => {
      const node = cell.node;
      const seen = view.cells[index];
      const step = seen?.type === 'code' ? seen.step ?? undefined : undefined;
      node.classList.toggle(STEP_CLASS, step !== undefined);
      if (step !== undefined) {
        node.style.setProperty('--cp-step-colour', stepColour(step));
        node.dataset.cellpipeStep = step;
      } else {
        node.style.removeProperty('--cp-step-colour');
        delete node.dataset.cellpipeStep;
      }
      const text =
        step !== undefined && seen?.starts
          ? badgeText(step, nodes.get(step)?.resources ?? resourcesOf(seen.fields ?? {}))
          : undefined;
      mark(node, BADGE_CLASS, text, `cellpipe step ${step ?? ''}`);
      const role = seen?.type === 'code' ? seen.role ?? undefined : undefined;
      mark(node, ROLE_CLASS, role, role ? `cellpipe: ${role} cell` : '');
      if (role) {
        node.dataset.cellpipeRole = role;
      } else {
        delete node.dataset.cellpipeRole;
      }
      const notes = warnings.get(index) ?? [];
      mark(node, NOTE_CLASS, noteText(notes), notes.map(note => note.message).join('\n\n'));
    });
  }

  private pending = false;
}

/** The mark of a cell's warnings: what the analysis could not be sure of comes first. */
export function noteText(notes: { mark: string | null }[]): string | undefined {
  if (notes.length === 0) {
    return undefined;
  }
  const words = [
    notes.some(note => note.mark === 'boundary') ? 'cannot cross a step' : '',
    notes.some(note => note.mark === 'order') ? 'notebook order' : ''
  ].filter(Boolean);
  const others = notes.filter(note => note.mark === null).length;
  if (others > 0) {
    words.push(words.length > 0 ? `+${others}` : `${others} warning${others > 1 ? 's' : ''}`);
  }
  return `⚠ ${words.join(' · ')}`;
}

/** Adds, updates or removes one decoration element at the top of a cell. */
function mark(cell: HTMLElement, className: string, text: string | undefined, title: string): void {
  let element = cell.querySelector<HTMLElement>(`:scope > .${className}`);
  if (text === undefined) {
    element?.remove();
    return;
  }
  if (!element) {
    element = document.createElement('div');
    element.className = className;
    cell.prepend(element);
  }
  element.textContent = text;
  element.title = title;
}

/** A step's resources from the cell's own fields, while the notebook has errors and no graph. */
function resourcesOf(fields: { [key: string]: api.FieldView }): { [key: string]: unknown } {
  const resources: { [key: string]: unknown } = {};
  for (const key of ['cpu', 'cpu_limit', 'memory', 'memory_limit', 'gpu', 'gpu_vendor', 'gpu_type']) {
    if (fields[key]) {
      resources[key] = fields[key].value;
    }
  }
  return resources;
}

/** "train · cpu 500m–2 · mem 1Gi · gpu 1 × a100": requests, limits after a dash. */
export function badgeText(step: string, resources: { [key: string]: unknown }): string {
  const parts = [step];
  const range = (request: unknown, limit: unknown): string =>
    [request, limit].filter(value => value !== undefined && value !== null && value !== '').map(String).join('–');
  const cpu = range(resources.cpu, resources.cpu_limit);
  if (cpu) {
    parts.push(`cpu ${resources.cpu === undefined ? '≤' : ''}${cpu}`);
  }
  const memory = range(resources.memory, resources.memory_limit);
  if (memory) {
    parts.push(`mem ${resources.memory === undefined ? '≤' : ''}${memory}`);
  }
  if (resources.gpu !== undefined && resources.gpu !== '') {
    parts.push(`gpu ${String(resources.gpu)}${resources.gpu_type ? ` × ${String(resources.gpu_type)}` : ''}`);
  }
  return parts.join(' · ');
}

/** A stable colour per step name, so every cell of a step shares its edge colour. */
export function stepColour(step: string): string {
  let hash = 0;
  for (let i = 0; i < step.length; i++) {
    hash = (hash * 31 + step.charCodeAt(i)) >>> 0;
  }
  return `hsl(${hash % 360}, 65%, 50%)`;
}
