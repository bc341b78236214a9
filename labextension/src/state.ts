/**
 * What the server says about one notebook's pipeline (problems and graph), shared by the step form
 * and the pipeline panel so both show the same answer. The server reads the saved file, so the
 * state refreshes after every save of the notebook.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import { ISignal, Signal } from '@lumino/signaling';

import * as api from './api';
import type { Graph } from './layout';

export class PipelineState {
  constructor(readonly panel: NotebookPanel) {
    panel.context.saveState.connect((_, state) => {
      if (state === 'completed') {
        void this.refresh();
      }
    }, this);
    void panel.context.ready.then(() => this.refresh());
  }

  get path(): string {
    return this.panel.context.path;
  }

  /** Emitted after each refresh, whether it succeeded or not. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  validation: api.Validation | null = null;
  graph: Graph | null = null;
  /** Why the last refresh failed (the server is unreachable, the notebook is not JSON...). */
  error: string | null = null;

  /** Problems of one cell, for the form's inline messages. */
  problemsOf(cell: number): api.Problem[] {
    return (this.validation?.problems ?? []).filter(problem => problem.cell === cell);
  }

  /** Ask the server again; a graph is only drawn for a valid notebook. */
  async refresh(): Promise<void> {
    const path = this.path;
    const asked = ++this._asked;
    let validation: api.Validation | null = null;
    let graph: Graph | null = null;
    let error: string | null = null;
    try {
      validation = await api.validate(path);
      graph = validation.valid ? await api.graph(path) : null;
    } catch (reason) {
      error = reason instanceof Error ? reason.message : String(reason);
    }
    if (asked !== this._asked) {
      return; // a later save asked again: its answer is the one to show
    }
    [this.validation, this.graph, this.error] = [validation, graph, error];
    this._changed.emit();
  }

  private _asked = 0;

  private _changed = new Signal<this, void>(this);
}

/** One state per open notebook, dropped when the notebook closes. */
export class PipelineStates {
  get(panel: NotebookPanel): PipelineState {
    let state = this._states.get(panel);
    if (!state) {
      state = new PipelineState(panel);
      this._states.set(panel, state);
      panel.disposed.connect(() => this._states.delete(panel));
    }
    return state;
  }

  private _states = new Map<NotebookPanel, PipelineState>();
}
