/**
 * cellpipe's JupyterLab commands: Validate, Compile, Run locally, Submit to KFP and Debug, plus
 * opening a run's executed notebook and a step's report. They are in the command palette, on the
 * notebook toolbar and bound to keys through the plugin's settings schema
 * (`labextension/schema/commands.json`), as jupyterlab/extension-examples does; the pipeline
 * panel's buttons run the same actions.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { type ICommandPalette, Notification } from '@jupyterlab/apputils';
import type { INotebookTracker } from '@jupyterlab/notebook';
import { bugIcon, buildIcon, checkIcon, launchIcon, runIcon } from '@jupyterlab/ui-components';

import { debugStep } from './debug';
import type { PipelinePanel } from './panel';
import { DEBUG, OPEN_NOTEBOOK, OPEN_REPORT, RunResults, openExecutedNotebook, openReport } from './runresults';

const CATEGORY = 'cellpipe';

const ACTIONS = [
  { id: 'cellpipe:validate', action: 'validate', label: 'Validate Pipeline', icon: checkIcon },
  { id: 'cellpipe:compile', action: 'compile', label: 'Compile Pipeline to KFP YAML', icon: buildIcon },
  { id: 'cellpipe:run-local', action: 'run', label: 'Run Pipeline Locally', icon: runIcon },
  { id: 'cellpipe:submit', action: 'submit', label: 'Submit Pipeline to KFP', icon: launchIcon }
] as const;

function message(reason: unknown): string {
  return reason instanceof Error ? reason.message : String(reason);
}

export function addCommands(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  panel: PipelinePanel,
  results: RunResults,
  palette: ICommandPalette | null
): void {
  const hasNotebook = (): boolean => tracker.currentWidget !== null;
  for (const { id, action, label, icon } of ACTIONS) {
    app.commands.addCommand(id, {
      label,
      caption: `cellpipe: ${label.toLowerCase()} of the current notebook`,
      icon,
      isEnabled: hasNotebook,
      execute: async () => {
        app.shell.activateById(panel.id); // its status line and runs list show the outcome
        await panel.act(action);
      }
    });
  }

  app.commands.addCommand(DEBUG, {
    label: 'Debug Failed Step in the Kernel',
    caption: "cellpipe: load a failed step's inputs into the notebook's kernel and insert its code",
    icon: bugIcon,
    isEnabled: args => Boolean(args.run) || panel.selectedRun !== null,
    execute: async args => {
      const run = String(args.run ?? panel.selectedRun ?? '');
      try {
        const known = await results.load(run);
        const failed = args.step ? known.steps.find(s => s.name === args.step) : known.steps.find(s => s.state === 'failed');
        if (!failed) {
          throw new Error(`run ${run} has no failed step to debug`);
        }
        const path = known.notebook ?? tracker.currentWidget?.context.path;
        if (!path) {
          throw new Error(`the notebook of run ${run} is outside the server root`);
        }
        return await debugStep(app, tracker, path, known.id, failed.name, failed.error?.cell ?? null);
      } catch (reason) {
        Notification.error(`cellpipe debug: ${message(reason)}`, { autoClose: 8000 });
        return null;
      }
    }
  });

  app.commands.addCommand(OPEN_NOTEBOOK, {
    label: 'Open Executed Notebook of the Run',
    caption: "cellpipe: the run's notebook with every cell's outputs as its step produced them",
    isEnabled: args => Boolean(args.run) || panel.selectedRun !== null,
    execute: async args => {
      const run = String(args.run ?? panel.selectedRun ?? '');
      try {
        return await openExecutedNotebook(app, run);
      } catch (reason) {
        Notification.error(`cellpipe: ${message(reason)}`, { autoClose: 8000 });
        return null;
      }
    }
  });

  app.commands.addCommand(OPEN_REPORT, {
    label: args => (args.step ? `Open Report of Step ${String(args.step)}` : 'Open Step Report'),
    isEnabled: args => Boolean(args.run && args.step),
    execute: args => openReport(app, String(args.run), String(args.step))
  });

  for (const { id } of ACTIONS) {
    palette?.addItem({ command: id, category: CATEGORY });
  }
  palette?.addItem({ command: DEBUG, category: CATEGORY });
  palette?.addItem({ command: OPEN_NOTEBOOK, category: CATEGORY });
  tracker.currentChanged.connect(() => app.commands.notifyCommandChanged());
}
