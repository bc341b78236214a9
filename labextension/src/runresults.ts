/**
 * A finished run brought back into the notebook, in the pipeline panel's run details: open the
 * executed notebook (every cell's outputs as its step produced them), open a step's HTML report,
 * and for a failed step its error with the cell that raised (a click goes to that cell) and a Debug
 * button that loads the step's inputs into the notebook's kernel (`debug.ts`).
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { IFrame, MainAreaWidget } from '@jupyterlab/apputils';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

import * as api from './api';

export const OPEN_NOTEBOOK = 'cellpipe:open-executed-notebook';
export const OPEN_REPORT = 'cellpipe:open-step-report';
export const DEBUG = 'cellpipe:debug';

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

/** The results of finished runs, asked once per run. */
export class RunResults {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly tracker: INotebookTracker,
    private readonly redraw: () => void
  ) {}

  /** What is known of a run's results (undefined while it runs or is being asked). */
  get(id: string): api.RunResults | undefined {
    return this.results.get(id);
  }

  /** The first failed step of a run, with its error, for the Debug command's default. */
  failedStep(id: string): { step: string; error: api.StepError | null } | undefined {
    const failed = this.results.get(id)?.steps.find(step => step.state === 'failed');
    return failed ? { step: failed.name, error: failed.error } : undefined;
  }

  async load(id: string): Promise<api.RunResults> {
    const known = this.results.get(id);
    if (known) {
      return known;
    }
    const results = await api.runResults(id);
    this.results.set(id, results);
    return results;
  }

  /** Appends a finished run's actions and failures to the panel's run details. */
  render(container: HTMLElement, run: { id: string; state: string }): void {
    if (!FINAL.has(run.state)) {
      return;
    }
    const results = this.results.get(run.id);
    if (!results) {
      if (!this.asking.has(run.id)) {
        this.asking.add(run.id);
        void this.load(run.id)
          .catch(() => undefined) // a run the store does not know (a remote engine's): no results
          .finally(() => {
            this.asking.delete(run.id);
            this.redraw();
          });
      }
      return;
    }
    const section = document.createElement('div');
    section.className = 'cp-run-results';
    const buttons = document.createElement('div');
    buttons.className = 'cp-buttons';
    buttons.appendChild(
      button('Open executed notebook', 'cp-open-executed', () =>
        void this.app.commands.execute(OPEN_NOTEBOOK, { run: run.id })
      )
    );
    section.appendChild(buttons);
    const reports = results.steps.filter(step => step.report);
    if (reports.length > 0) {
      const list = document.createElement('div');
      list.className = 'cp-reports';
      list.append('Reports: ');
      for (const step of reports) {
        list.appendChild(
          button(step.name, 'cp-open-report', () =>
            void this.app.commands.execute(OPEN_REPORT, { run: run.id, step: step.name })
          )
        );
      }
      section.appendChild(list);
    }
    for (const step of results.steps.filter(s => s.state === 'failed')) {
      section.appendChild(this.failure(results, step));
    }
    container.appendChild(section);
  }

  private failure(results: api.RunResults, step: api.RunResults['steps'][number]): HTMLElement {
    const box = document.createElement('div');
    box.className = 'cp-step-failure';
    box.dataset.step = step.name;
    const error = step.error;
    const title = document.createElement('button');
    title.type = 'button';
    title.className = 'cp-problem cp-failure-cell';
    const where = error?.cell !== null && error?.cell !== undefined ? `cell ${error.cell}` : 'step';
    const what = error?.ename ? `${error.ename}: ${error.evalue ?? ''}` : step.message ?? 'failed';
    title.textContent = `${step.name} failed in ${where}: ${what}`;
    if (error?.cell !== null && error?.cell !== undefined && results.notebook) {
      const cell = error.cell;
      const path = results.notebook;
      title.title = 'Go to the cell';
      title.addEventListener('click', () => void this.goTo(path, cell));
    }
    box.appendChild(title);
    if (error && error.traceback.length > 0) {
      const pre = document.createElement('pre');
      pre.className = 'cp-traceback';
      const lines = error.traceback.map(stripAnsi).filter(line => !/^-+$/.test(line.trim())); // IPython's rule
      pre.textContent = lines.slice(-6).join('\n');
      box.appendChild(pre);
    }
    box.appendChild(
      button('Debug in the kernel', 'cp-debug', () =>
        void this.app.commands.execute(DEBUG, { run: results.id, step: step.name })
      )
    );
    return box;
  }

  /** Opens (or shows) the run's notebook and makes the cell the active one. */
  async goTo(path: string, cell: number): Promise<void> {
    const panel = await openNotebook(this.app, this.tracker, path);
    if (panel) {
      await goToCell(panel, cell);
    }
  }

  private results = new Map<string, api.RunResults>();
  private asking = new Set<string>();
}

/** The notebook panel of `path`, opened if it is not open yet. */
export async function openNotebook(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  path: string
): Promise<NotebookPanel | null> {
  const open = tracker.find(panel => panel.context.path === path);
  if (open) {
    app.shell.activateById(open.id);
    return open;
  }
  const widget = await app.commands.execute('docmanager:open', { path });
  const panel = tracker.find(candidate => candidate === widget) ?? null;
  await panel?.context.ready;
  return panel;
}

/** Makes a cell the active one and scrolls it into view. */
export async function goToCell(panel: NotebookPanel, index: number): Promise<void> {
  const notebook = panel.content;
  if (index < 0 || index >= notebook.widgets.length) {
    return;
  }
  notebook.activeCellIndex = index;
  await notebook.scrollToItem(index, 'center');
  notebook.activeCell?.node.focus();
}

/** The run's executed notebook, written by the server inside its root, opened in JupyterLab. */
export async function openExecutedNotebook(app: JupyterFrontEnd, run: string): Promise<string> {
  const path = await api.executedNotebook(run);
  await app.commands.execute('docmanager:open', { path, factory: 'Notebook' });
  return path;
}

/** A step's HTML report in a main-area tab; the page is sandboxed by the server too. */
export function openReport(app: JupyterFrontEnd, run: string, step: string): void {
  const id = `cellpipe-report-${run}-${step}`.replace(/[^A-Za-z0-9_-]/g, '-');
  for (const open of app.shell.widgets('main')) {
    if (open.id === id) {
      app.shell.activateById(id);
      return;
    }
  }
  const frame = new IFrame({ sandbox: ['allow-scripts', 'allow-popups'] });
  frame.url = api.reportUrl(run, step);
  frame.addClass('cp-report-frame');
  const widget = new MainAreaWidget({ content: frame });
  widget.id = id;
  widget.title.label = `${step} report (${run})`;
  widget.title.closable = true;
  app.shell.add(widget, 'main');
  app.shell.activateById(widget.id);
}

function button(text: string, className: string, onClick: () => void): HTMLButtonElement {
  const element = document.createElement('button');
  element.type = 'button';
  element.className = `jp-mod-styled ${className}`;
  element.textContent = text;
  element.addEventListener('click', onClick);
  return element;
}

/** Tracebacks carry terminal colours; the panel shows plain text. */
function stripAnsi(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\u001b\[[0-9;]*m/g, '');
}
