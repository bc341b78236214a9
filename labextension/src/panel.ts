/**
 * The pipeline panel of the current notebook: its problems (click one to go to the cell), a DAG
 * preview, Compile / Run locally / Submit to KFP, and the runs list whose steps take their colours
 * live from each run's event stream; selecting a run shows its step logs and metrics.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { RunView as RunFold, RunEvent, StepState, isFinal } from './events';
import { layoutGraph } from './layout';
import { goToCell } from './runresults';
import type { PipelineState, PipelineStates } from './state';

export interface PanelSettings {
  kfpEndpoint: string; // the name of one of the server's KFP endpoints; empty: its default connection
}

const SVG = 'http://www.w3.org/2000/svg';
const LOG_LINES = 200;
const RUNS_POLL_MS = 5000;

/** What the panel knows of one run: its record from the server and the fold of its events. */
class RunView {
  constructor(record: api.RunRecord) {
    this.record = record;
    for (const step of record.steps) {
      this.fold.step(step.name).state = step.state as StepState;
    }
    this.fold.state = record.state;
  }

  record: api.RunRecord;
  readonly fold = new RunFold([], LOG_LINES);
  stop: (() => void) | null = null;

  get state(): string {
    return this.fold.state;
  }

  get states(): { [step: string]: StepState } {
    return this.fold.states;
  }

  get lastSeq(): number {
    return this.fold.lastSeq;
  }

  /** The run's page in the KFP UI (a KFP run's run_started data). */
  get url(): string | null {
    const url = this.fold.data.url;
    return typeof url === 'string' ? url : null;
  }

  /** Folds one event in; returns true when the run has ended. */
  apply(event: RunEvent): boolean {
    return this.fold.apply(event) && event.type === 'run_finished';
  }
}

export class PipelinePanel extends Widget {
  constructor(
    private readonly tracker: INotebookTracker,
    private readonly states: PipelineStates,
    private readonly settings: () => PanelSettings,
    /** Appends a finished run's results (executed notebook, reports, failures) to its details. */
    private readonly results?: (container: HTMLElement, run: { id: string; state: string }) => void
  ) {
    super();
    this.id = 'cellpipe-pipeline-panel';
    this.addClass('cp-PipelinePanel');
    this.title.caption = 'cellpipe: pipeline of the current notebook';
    this.node.innerHTML = `
      <h2>Pipeline <span class="cp-pipeline-name"></span></h2>
      <div class="cp-buttons" role="toolbar" aria-label="cellpipe actions">
        <button type="button" class="jp-mod-styled" data-action="validate">Validate</button>
        <button type="button" class="jp-mod-styled" data-action="compile">Compile</button>
        <button type="button" class="jp-mod-styled jp-mod-accept" data-action="run">Run locally</button>
        <button type="button" class="jp-mod-styled" data-action="submit">Submit to KFP</button>
      </div>
      <div class="cp-status" role="status" aria-live="polite"></div>
      <h3>Problems</h3>
      <ul class="cp-problems" aria-label="validation problems"></ul>
      <h3>Graph</h3>
      <div class="cp-dag"></div>
      <h3>Runs</h3>
      <ul class="cp-runs" aria-label="runs"></ul>
      <div class="cp-run-details"></div>`;
    for (const button of this.node.querySelectorAll<HTMLButtonElement>('button[data-action]')) {
      button.addEventListener('click', () => void this.act(button.dataset.action ?? ''));
      button.dataset.command = `cellpipe:${button.dataset.action === 'run' ? 'run-local' : button.dataset.action}`;
    }
    tracker.currentChanged.connect((_, panel) => this.watch(panel), this);
    this.watch(tracker.currentWidget);
  }

  /** Runs started elsewhere (a kernel, the command line) join the list while the panel is shown. */
  protected onAfterShow(): void {
    void this.loadRuns();
    this.poll = window.setInterval(() => void this.loadRuns(), RUNS_POLL_MS);
  }

  protected onBeforeHide(): void {
    window.clearInterval(this.poll);
  }

  dispose(): void {
    window.clearInterval(this.poll);
    for (const view of this.runs.values()) {
      view.stop?.();
    }
    super.dispose();
  }

  private part<T extends Element = HTMLElement>(selector: string): T {
    return this.node.querySelector(selector) as T;
  }

  private get current(): PipelineState | null {
    const panel = this.tracker.currentWidget;
    return panel ? this.states.get(panel) : null;
  }

  private watch(panel: NotebookPanel | null): void {
    if (panel) {
      this.states.get(panel).changed.connect(this.renderState, this);
    }
    this.status(''); // the last message was about another notebook
    this.renderState();
    void this.loadRuns();
  }

  private status(text: string, isError = false): void {
    const node = this.part('.cp-status');
    node.textContent = text;
    node.classList.toggle('cp-error', isError);
  }

  /** The run whose details are shown (the Debug command's default run). */
  get selectedRun(): string | null {
    return this.selected;
  }

  /** One of the panel's actions (`validate`, `compile`, `run`, `submit`): its buttons and commands. */
  async act(action: string): Promise<void> {
    const state = this.current;
    if (!state) {
      this.status('Open a notebook first.', true);
      return;
    }
    try {
      if (state.panel.context.model.dirty) {
        await state.panel.context.save(); // the server reads the saved file
      } else if (action === 'validate') {
        await state.refresh();
      }
      if (action === 'compile') {
        const { yaml, filename } = await api.compile(state.path);
        download(filename, yaml);
        this.status(`Compiled ${filename}.`);
      } else if (action === 'run' || action === 'submit') {
        const parameters = action === 'submit' ? await this.askParameters(state) : {};
        if (parameters === null) {
          return;
        }
        const run =
          action === 'run'
            ? await api.startRun(state.path, 'local', parameters)
            : await api.startRun(state.path, 'kfp', parameters, this.settings().kfpEndpoint);
        this.status(`Started run ${run.id}.`);
        this.follow(new RunView(run));
        this.selected = run.id;
        await this.loadRuns();
      } else {
        this.status(state.validation?.valid ? 'The notebook is valid.' : 'See the problems below.');
      }
    } catch (reason) {
      const message = reason instanceof Error ? reason.message : String(reason);
      this.status(message, true);
      if (reason instanceof api.ApiError && reason.problems.length > 0) {
        await state.refresh();
      }
    }
  }

  /** Where Submit to KFP goes: the endpoint the settings name, as the server describes it. */
  private async describeEndpoint(): Promise<string> {
    const name = this.settings().kfpEndpoint;
    if (!name) {
      return "KFP: the server's default connection";
    }
    try {
      const endpoint = (await api.kfpEndpoints()).find(e => e.name === name);
      if (!endpoint) {
        return `KFP endpoint ${name}: not one of the server's endpoints`;
      }
      return `KFP endpoint ${name}: ${endpoint.host}` + (endpoint.namespace ? `, namespace ${endpoint.namespace}` : '');
    } catch {
      return `KFP endpoint ${name}`;
    }
  }

  /** A dialog with one box per pipeline parameter, holding the parameters cell's values. */
  private async askParameters(state: PipelineState): Promise<{ [name: string]: unknown } | null> {
    if (!state.graph) {
      await state.refresh();
    }
    const parameters = state.graph?.parameters ?? [];
    const body = new Widget();
    const where = document.createElement('p');
    where.textContent = await this.describeEndpoint();
    body.node.appendChild(where);
    const inputs = new Map<string, HTMLInputElement>();
    for (const parameter of parameters) {
      const label = document.createElement('label');
      label.className = 'cp-field';
      label.textContent = `${parameter.name} (${parameter.type})`;
      const input = document.createElement('input');
      input.className = 'cp-input';
      input.name = parameter.name;
      input.value = typeof parameter.default === 'string' ? parameter.default : JSON.stringify(parameter.default);
      label.appendChild(input);
      body.node.appendChild(label);
      inputs.set(parameter.name, input);
    }
    const result = await showDialog({
      title: 'Submit to Kubeflow Pipelines',
      body,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })]
    });
    if (!result.button.accept) {
      return null;
    }
    const values: { [name: string]: unknown } = {};
    for (const parameter of parameters) {
      const text = inputs.get(parameter.name)?.value ?? '';
      values[parameter.name] = parameter.type === 'str' ? text : parseValue(text);
    }
    return values;
  }

  private renderState(): void {
    const state = this.current;
    this.part('.cp-pipeline-name').textContent = state?.graph?.name ?? state?.path ?? '';
    const problems = this.part('.cp-problems');
    problems.replaceChildren();
    if (state?.error) {
      this.status(state.error, true);
    }
    for (const problem of state?.validation?.problems ?? []) {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = `cp-problem cp-${problem.severity}`;
      const where = problem.cell === null ? 'notebook' : `cell ${problem.cell}`;
      button.textContent = `${where}${problem.tag ? ` [${problem.tag}]` : ''}: ${problem.message}`;
      if (problem.cell !== null && state) {
        const cell = problem.cell;
        button.addEventListener('click', () => void goToCell(state.panel, cell));
      }
      item.appendChild(button);
      problems.appendChild(item);
    }
    if (state?.validation && state.validation.problems.length === 0) {
      const item = document.createElement('li');
      item.className = 'cp-muted';
      item.textContent = 'No problems.';
      problems.appendChild(item);
    }
    this.renderDag();
  }

  /** The DAG, coloured by the selected run's states when it is a run of this pipeline. */
  private renderDag(): void {
    const container = this.part('.cp-dag');
    container.replaceChildren();
    const graph = this.current?.graph;
    if (!graph) {
      container.textContent = this.current?.validation ? 'Fix the errors to see the graph.' : '';
      return;
    }
    const run = this.selected ? this.runs.get(this.selected) : undefined;
    const states = run && run.record.pipeline === graph.name ? run.states : {};
    const layout = layoutGraph(graph);
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${layout.width} ${layout.height}`);
    svg.setAttribute('width', String(layout.width));
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `graph of ${graph.name}: ${graph.nodes.length} steps, ${graph.edges.length} edges`);
    for (const line of layout.lines) {
      const path = document.createElementNS(SVG, 'line');
      path.setAttribute('class', `cp-edge cp-edge-${line.kind}`);
      path.setAttribute('data-source', line.source);
      path.setAttribute('data-target', line.target);
      for (const [name, value] of [['x1', line.x1], ['y1', line.y1], ['x2', line.x2], ['y2', line.y2]] as const) {
        path.setAttribute(name, String(value));
      }
      svg.appendChild(path);
    }
    for (const box of layout.boxes) {
      const group = document.createElementNS(SVG, 'g');
      group.setAttribute('class', `cp-node cp-state-${states[box.id] ?? 'none'}`);
      group.setAttribute('data-step', box.id);
      const rect = document.createElementNS(SVG, 'rect');
      for (const [name, value] of [['x', box.x], ['y', box.y], ['width', box.width], ['height', box.height]]) {
        rect.setAttribute(String(name), String(value));
      }
      rect.setAttribute('rx', '4');
      const text = document.createElementNS(SVG, 'text');
      text.setAttribute('x', String(box.x + box.width / 2));
      text.setAttribute('y', String(box.y + box.height / 2 + 4));
      text.setAttribute('text-anchor', 'middle');
      text.textContent = box.id;
      group.append(rect, text);
      svg.appendChild(group);
    }
    container.appendChild(svg);
  }

  private async loadRuns(): Promise<void> {
    try {
      for (const record of await api.listRuns(10)) {
        const known = this.runs.get(record.id);
        if (!known) {
          const view = new RunView(record);
          this.runs.set(record.id, view);
          if (record.state === 'running') {
            this.follow(view);
          }
        } else if (!known.stop) {
          known.record = record;
        }
      }
      this.order = [...this.runs.values()]
        .sort((a, b) => b.record.created - a.record.created)
        .slice(0, 10)
        .map(view => view.record.id);
    } catch (reason) {
      this.status(`Runs: ${reason instanceof Error ? reason.message : String(reason)}`, true);
    }
    this.renderRuns();
  }

  /** Follows a run's events, redrawing at most once per frame. */
  private follow(view: RunView): void {
    this.runs.set(view.record.id, view);
    if (!this.order.includes(view.record.id)) {
      this.order.unshift(view.record.id);
    }
    view.stop = api.followRun(view.record.id, view.lastSeq, event => {
      if (view.apply(event)) {
        view.stop = null;
        void api.getRun(view.record.id).then(record => {
          view.record = record;
          this.redraw();
        });
      }
      this.redraw();
    });
  }

  /** Redraws the runs and the DAG at the next frame (also when a run's results arrive). */
  redraw(): void {
    if (this.frame) {
      return;
    }
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.renderRuns();
      this.renderDag();
    });
  }

  private renderRuns(): void {
    const list = this.part('.cp-runs');
    list.replaceChildren();
    for (const id of this.order) {
      const view = this.runs.get(id);
      if (!view) {
        continue;
      }
      const item = document.createElement('li');
      item.className = `cp-run cp-run-${view.state}`;
      item.dataset.runId = id;
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'cp-run-button';
      button.setAttribute('aria-pressed', String(id === this.selected));
      button.textContent = `${view.record.pipeline} · ${id} · ${view.state}`;
      button.addEventListener('click', () => {
        this.selected = id;
        this.renderRuns();
        this.renderDag();
      });
      const steps = document.createElement('div');
      steps.className = 'cp-run-steps';
      for (const [step, state] of Object.entries(view.states)) {
        const chip = document.createElement('span');
        chip.className = `cp-chip cp-state-${state}`;
        chip.dataset.step = step;
        chip.dataset.state = state;
        chip.textContent = step;
        chip.title = `${step}: ${state}`;
        steps.appendChild(chip);
      }
      item.append(button, steps);
      list.appendChild(item);
    }
    this.renderDetails();
  }

  private renderDetails(): void {
    const details = this.part('.cp-run-details');
    details.replaceChildren();
    const view = this.selected ? this.runs.get(this.selected) : undefined;
    if (!view) {
      return;
    }
    const heading = document.createElement('h3');
    heading.textContent = `Run ${view.record.id}: ${view.state}`;
    details.appendChild(heading);
    this.results?.(details, { id: view.record.id, state: view.state });
    if (view.record.remote_id && view.url) {
      const link = document.createElement('a');
      link.href = view.url;
      link.target = '_blank';
      link.rel = 'noopener';
      link.textContent = 'Open in the KFP UI';
      details.appendChild(link);
    }
    const metrics = { ...view.record.metrics, ...view.fold.metrics };
    if (Object.keys(metrics).length > 0) {
      const table = document.createElement('table');
      table.className = 'cp-metrics';
      for (const [name, value] of Object.entries(metrics)) {
        const row = table.insertRow();
        row.insertCell().textContent = name;
        row.insertCell().textContent = String(value);
      }
      details.appendChild(table);
    }
    for (const [step, state] of Object.entries(view.states)) {
      const section = document.createElement('details');
      section.className = 'cp-step-log';
      const key = `${view.record.id}/${step}`;
      section.open = this.openLogs.has(key) || state === 'running' || state === 'failed';
      section.addEventListener('toggle', () => {
        if (section.open) {
          this.openLogs.add(key);
        } else {
          this.openLogs.delete(key);
        }
      });
      const summary = document.createElement('summary');
      const record = view.record.steps.find(s => s.name === step);
      const duration = record?.duration !== null && record?.duration !== undefined ? ` (${record.duration.toFixed(1)} s)` : '';
      summary.textContent = `${step}: ${state}${isFinal(state) ? duration : ''}`;
      const pre = document.createElement('pre');
      pre.textContent = (view.fold.steps.get(step)?.log ?? []).join('\n') || (record?.message ?? '');
      section.append(summary, pre);
      details.appendChild(section);
    }
  }

  private runs = new Map<string, RunView>();
  private order: string[] = [];
  private selected: string | null = null;
  private frame = 0;
  private poll = 0;
  /** Log sections the user opened (`run/step`): redraws keep them open. */
  private openLogs = new Set<string>();
}

/** A parameter as typed: JSON when it parses (numbers, booleans, lists), the text otherwise. */
function parseValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function download(filename: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
  const anchor = document.createElement('a');
  anchor.href = url;
  anchor.download = filename;
  document.body.appendChild(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
