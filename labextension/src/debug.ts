/**
 * Debug a failed step in the notebook's own kernel.
 *
 * A new cell (tagged `skip`, so it never becomes part of the pipeline) runs
 * `%load_ext jupyter_ext` and `%cellpipe inputs RUN STEP` in the kernel: the magic loads the step's
 * inputs, imports and carried state from the run into the kernel's namespace, prints what it
 * loaded, and asks for the step's code as the next cell (IPython's `set_next_input` payload, which
 * JupyterLab turns into a new cell below). That cell is tagged `skip` too and made active: running
 * it reproduces the failure with everything inspectable.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { NotebookActions, type INotebookTracker, type NotebookPanel } from '@jupyterlab/notebook';

import { goToCell, openNotebook } from './runresults';

export function debugSource(run: string, step: string): string {
  return `%load_ext jupyter_ext\n%cellpipe inputs ${run} ${step}`;
}

/**
 * Inserts and runs the debug cell below `afterCell` (the cell that raised; the end of the notebook
 * when unknown) in the notebook at `path`; resolves to the index of the inserted step code cell,
 * or of the debug cell when the magic inserted none (it failed: its output says why).
 */
export async function debugStep(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  path: string,
  run: string,
  step: string,
  afterCell: number | null
): Promise<number> {
  const panel = await openNotebook(app, tracker, path);
  if (!panel) {
    throw new Error(`cannot open ${path}`);
  }
  await panel.sessionContext.ready;
  const notebook = panel.content;
  const last = notebook.widgets.length - 1;
  notebook.activeCellIndex = afterCell !== null && afterCell >= 0 && afterCell <= last ? afterCell : last;
  NotebookActions.insertBelow(notebook);
  const index = notebook.activeCellIndex;
  const cell = notebook.activeCell;
  if (!cell) {
    throw new Error('could not insert the debug cell');
  }
  cell.model.sharedModel.setSource(debugSource(run, step));
  cell.model.setMetadata('tags', ['skip']);
  const count = notebook.widgets.length;
  await NotebookActions.run(notebook, panel.sessionContext);
  return await settle(panel, index, count);
}

/** Tags the cell the magic inserted (if any) `skip` and makes it the active one. */
async function settle(panel: NotebookPanel, index: number, count: number): Promise<number> {
  const notebook = panel.content;
  if (notebook.widgets.length > count) {
    const inserted = notebook.widgets[index + 1];
    inserted.model.setMetadata('tags', ['skip']);
    await goToCell(panel, index + 1);
    return index + 1;
  }
  await goToCell(panel, index);
  return index;
}
