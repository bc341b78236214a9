/**
 * cellpipe's JupyterLab extension: one plugin per concept (the step form, the cell decorations,
 * the pipeline panel with its settings), sharing the server's view of each notebook.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { Token } from '@lumino/coreutils';

import { StepDecorations } from './badges';
import { PipelinePanel } from './panel';
import { PipelineStates } from './state';
import { StepForm } from './stepform';

interface ICellpipe {
  states: PipelineStates;
  setting: (name: 'kfpHost' | 'namespace' | 'defaultImage') => string;
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
          for (const name of ['kfpHost', 'namespace', 'defaultImage']) {
            values[name] = String(settings.get(name).composite ?? '');
          }
        };
        read();
        settings.changed.connect(read);
      });
    }
    const cellpipe: ICellpipe = { states: new PipelineStates(), setting: name => values[name] ?? '' };
    const panel = new PipelinePanel(tracker, cellpipe.states, () => ({
      kfpHost: cellpipe.setting('kfpHost'),
      namespace: cellpipe.setting('namespace')
    }));
    panel.title.label = 'Pipeline';
    shell.add(panel, 'right', { rank: 600 });
    return cellpipe;
  }
};

const stepForm: JupyterFrontEndPlugin<void> = {
  id: 'cellpipe-labextension:step-form',
  description: "A side-panel form for the active cell's cellpipe step settings.",
  autoStart: true,
  requires: [INotebookTracker, ILabShell, ICellpipe],
  activate: (_app: JupyterFrontEnd, tracker: INotebookTracker, shell: ILabShell, cellpipe: ICellpipe): void => {
    const form = new StepForm(tracker, cellpipe.states, () => cellpipe.setting('defaultImage'));
    form.title.label = 'Step';
    shell.add(form, 'right', { rank: 601 });
  }
};

const decorations: JupyterFrontEndPlugin<void> = {
  id: 'cellpipe-labextension:decorations',
  description: 'Step badges and coloured step edges on notebook cells.',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (_app: JupyterFrontEnd, tracker: INotebookTracker): void => {
    tracker.widgetAdded.connect((_, panel) => new StepDecorations(panel));
  }
};

export default [pipeline, stepForm, decorations];
