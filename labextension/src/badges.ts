/**
 * Shows each code cell's step in the notebook: a badge with the step name and resources on the
 * cell that starts the step, and a left edge in the step's colour on every cell of it.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import type { ICellModel } from '@jupyterlab/cells';

import { CellpipeMetadata, badgeText, stepColour, stepsOfCells } from './metadata';

const STEP_CLASS = 'cp-step-cell';
const BADGE_CLASS = 'cp-step-badge';

/** Keeps one notebook's cell decorations in step with its cells' metadata and tags. */
export class StepDecorations {
  constructor(private readonly panel: NotebookPanel) {
    void panel.context.ready.then(() => {
      panel.model?.cells.changed.connect(this.schedule, this);
      this.schedule();
    });
  }

  /** Metadata changes come in bursts (a form apply sets one key at a time): redraw once per frame. */
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
    const widgets = this.panel.content.widgets;
    const models = widgets.map(cell => cell.model);
    for (const model of models) {
      // Lumino ignores a second connection of the same slot and receiver.
      model.metadataChanged.connect(this.schedule, this);
    }
    const steps = stepsOfCells(models.map(describe));
    widgets.forEach((cell, index) => {
      const step = steps[index];
      const node = cell.node;
      node.classList.toggle(STEP_CLASS, step !== undefined);
      if (step !== undefined) {
        node.style.setProperty('--cp-step-colour', stepColour(step));
        node.dataset.cellpipeStep = step;
      } else {
        node.style.removeProperty('--cp-step-colour');
        delete node.dataset.cellpipeStep;
      }
      const text = badgeText(cellpipeOf(cell.model)) ?? tagStep(cell.model);
      let badge = node.querySelector<HTMLElement>(`:scope > .${BADGE_CLASS}`);
      if (text && step !== undefined) {
        if (!badge) {
          badge = document.createElement('div');
          badge.className = BADGE_CLASS;
          node.prepend(badge);
        }
        badge.textContent = text;
        badge.title = `cellpipe step ${step}`;
      } else {
        badge?.remove();
      }
    });
  }

  private pending = false;
}

function cellpipeOf(model: ICellModel): CellpipeMetadata | undefined {
  const value = model.getMetadata('cellpipe');
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as CellpipeMetadata)
    : undefined;
}

function tagsOf(model: ICellModel): string[] {
  const tags = model.getMetadata('tags');
  return Array.isArray(tags) ? tags.map(String) : [];
}

/** The badge of a cell tagged the plain way (`step:NAME`). */
function tagStep(model: ICellModel): string | undefined {
  const name = tagsOf(model)
    .map(tag => /^(?:step|block):(.+)$/.exec(tag)?.[1])
    .find(found => found !== undefined);
  return name;
}

function describe(model: ICellModel): { cellpipe?: CellpipeMetadata; tags: string[]; type: string } {
  return { cellpipe: cellpipeOf(model), tags: tagsOf(model), type: model.type };
}
