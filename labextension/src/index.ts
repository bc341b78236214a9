/**
 * cellpipe's JupyterLab extension: one plugin per concept (the step form, the cell decorations,
 * the pipeline panel with its settings), sharing the server's view of each notebook.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { Token } from '@lumino/coreutils';

import { StepDecorations } from './badges';
import { CellsStates } from './cellstate';
import { addCommands } from './commands';
import { PipelinePanel } from './panel';
import { RunResults } from './runresults';
import { PipelineStates } from './state';
import { StepForm } from './stepform';

interface ICellpipe {
  states: PipelineStates;
  /** The server's reading of each open notebook's cells, for the form and the badges. */
  cells: CellsStates;
  panel: PipelinePanel;
  results: RunResults;
  setting: (name: 'kfpEndpoint' | 'defaultImage') => string;
}

const ICellpipe = new Token<ICellpipe>('cellpipe-labextension:ICellpipe', 'the shared pipeline states and settings');

/** Settings and the pipeline panel (the panel is where the settings are used). */
const pipeline: JupyterFrontEndPlugin<ICellpipe> = {
  id: 'cellpipe-labextension:plugin',
  description: 'The cellpipe pipeline panel: problems, DAG, compile, run, runs.',
  autoStart: true,
  requires: [INotebookTracker, ILabShell],
  optional: [ISettingRegistry],
  provides: ICellpipe,
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    shell: ILabShell,
    registry: ISettingRegistry | null
  ): ICellpipe => {
    const values: { [name: string]: string } = {};
    if (registry) {
      void registry.load(pipeline.id).then(settings => {
        const read = (): void => {
          for (const name of ['kfpEndpoint', 'defaultImage']) {
            values[name] = String(settings.get(name).composite ?? '');
          }
        };
        read();
        settings.changed.connect(read);
      });
    }
    const setting = (name: string): string => values[name] ?? '';
    const states = new PipelineStates();
    let panel: PipelinePanel | null = null;
    const results = new RunResults(app, tracker, () => panel?.redraw());
    panel = new PipelinePanel(
      tracker,
      states,
      () => ({ kfpEndpoint: setting('kfpEndpoint') }),
      (container, run) => results.render(container, run)
    );
    panel.title.label = 'Pipeline';
    shell.add(panel, 'right', { rank: 600 });
    return { states, cells: new CellsStates(), panel, results, setting };
  }
};

const stepForm: JupyterFrontEndPlugin<void> = {
  id: 'cellpipe-labextension:step-form',
  description: "A side-panel form for the active cell's cellpipe step settings.",
  autoStart: true,
  requires: [INotebookTracker, ILabShell, ICellpipe],
  activate: (_app: JupyterFrontEnd, tracker: INotebookTracker, shell: ILabShell, cellpipe: ICellpipe): void => {
    const form = new StepForm(tracker, cellpipe.cells, () => cellpipe.setting('defaultImage'));
    form.title.label = 'Step';
    shell.add(form, 'right', { rank: 601 });
  }
};

const decorations: JupyterFrontEndPlugin<void> = {
  id: 'cellpipe-labextension:decorations',
  description: 'Step badges (requests, limits), role marks and coloured step edges on notebook cells.',
  autoStart: true,
  requires: [INotebookTracker, ICellpipe],
  activate: (_app: JupyterFrontEnd, tracker: INotebookTracker, cellpipe: ICellpipe): void => {
    tracker.widgetAdded.connect((_, panel) => new StepDecorations(panel, cellpipe.cells.get(panel)));
  }
};

/** Validate, Compile, Run locally, Submit, Debug: palette, notebook toolbar, keyboard shortcuts. */
const commands: JupyterFrontEndPlugin<void> = {
  id: 'cellpipe-labextension:commands',
  description: "cellpipe's commands in the palette, the notebook toolbar and on keys.",
  autoStart: true,
  requires: [INotebookTracker, ICellpipe],
  optional: [ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    cellpipe: ICellpipe,
    palette: ICommandPalette | null
  ): void => {
    addCommands(app, tracker, cellpipe.panel, cellpipe.results, palette);
  }
};

export default [pipeline, stepForm, decorations, commands];
