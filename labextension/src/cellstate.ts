/**
 * What the server reads in each open notebook's cells, as the browser has them now (unsaved edits
 * included): each cell's settings with the tag or metadata they come from, the step it belongs to,
 * and the graph. The step form and the cell badges both show this one answer, so neither parses a
 * tag; it is asked again shortly after any cell or metadata change, and after a save.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import { ISignal, Signal } from '@lumino/signaling';

import * as api from './api';

const DEBOUNCE_MS = 250;

export class CellsState {
  constructor(readonly panel: NotebookPanel) {
    void panel.context.ready.then(() => {
      const model = panel.model;
      if (!model) {
        return;
      }
      model.metadataChanged.connect(this.schedule, this);
      model.cells.changed.connect(this.watchCells, this);
      this.watchCells();
    });
    panel.context.saveState.connect((_, state) => {
      if (state === 'completed') {
        this.schedule();
      }
    }, this);
  }

  /** The last answer (null until the first one, or when the server could not read the notebook). */
  view: api.CellsView | null = null;
  error: string | null = null;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The server's view of one cell (by index in the notebook). */
  cell(index: number): api.CellView | undefined {
    return this.view?.cells[index];
  }

  /** Tags and metadata are what the form and badges show: follow every cell's (typing is not followed). */
  private watchCells(): void {
    const cells = this.panel.model?.cells;
    for (let i = 0; cells && i < cells.length; i++) {
      cells.get(i).metadataChanged.connect(this.schedule, this); // Lumino ignores a repeated connection
    }
    this.schedule();
  }

  /** Ask again soon: edits come in bursts (typing, a form apply sets several keys). */
  schedule(): void {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.refresh(), DEBOUNCE_MS);
  }

  async refresh(): Promise<void> {
    const model = this.panel.model;
    if (!model || this.panel.isDisposed) {
      return;
    }
    const asked = ++this.asked;
    const notebook: api.NotebookContent = {
      metadata: model.metadata as { [key: string]: unknown },
      cells: model.sharedModel.cells.map(cell => ({
        cell_type: cell.cell_type,
        source: cell.getSource(),
        metadata: cell.getMetadata() as { [key: string]: unknown }
      }))
    };
    try {
      const path = this.panel.context.path;
      // A notebook too big to send (the server caps request bodies) is read from its saved file.
      const view = await api.cells(path, notebook).catch(reason => {
        if (reason instanceof api.ApiError && reason.status === 413) {
          return api.cells(path);
        }
        throw reason;
      });
      if (asked === this.asked) {
        [this.view, this.error] = [view, null];
      }
    } catch (reason) {
      if (asked === this.asked) {
        [this.view, this.error] = [null, reason instanceof Error ? reason.message : String(reason)];
      }
    }
    if (asked === this.asked) {
      this._changed.emit();
    }
  }

  private asked = 0;
  private timer = 0;
  private _changed = new Signal<this, void>(this);
}

/** One cells state per open notebook, dropped when the notebook closes. */
export class CellsStates {
  get(panel: NotebookPanel): CellsState {
    let state = this.states.get(panel);
    if (!state) {
      state = new CellsState(panel);
      this.states.set(panel, state);
      panel.disposed.connect(() => this.states.delete(panel));
    }
    return state;
  }

  private states = new Map<NotebookPanel, CellsState>();
}
