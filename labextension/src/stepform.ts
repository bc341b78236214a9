/**
 * The side-panel form of the active code cell's step settings, however they are written.
 *
 * It shows what the server's reader sees in the cell (plain tags, Kale tags or `metadata.cellpipe`)
 * and marks where each value comes from. Apply sends the filled-in form to the server, which writes
 * each changed value where it came from (a tag stays a tag) or, when the user chooses, moves the
 * cell's settings into `metadata.cellpipe` or into tags; the form then writes the answer into the
 * notebook model (the notebook becomes dirty like any edit). A value the reader refuses is shown
 * under its field and nothing is written.
 */
import type { Cell } from '@jupyterlab/cells';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import type { CellsStates } from './cellstate';

type Input = HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;
type Target = 'keep' | 'tags' | 'metadata';

const SOURCE_TEXT: { [source: string]: string } = {
  tag: 'tag',
  kale: 'Kale tag',
  metadata: 'metadata.cellpipe',
  'tag+metadata': 'tags + metadata.cellpipe'
};

export class StepForm extends Widget {
  constructor(
    private readonly tracker: INotebookTracker,
    private readonly cells: CellsStates,
    private readonly defaultImage: () => string
  ) {
    super();
    this.id = 'cellpipe-step-form';
    this.addClass('cp-StepForm');
    this.title.caption = 'cellpipe: step of the active cell';
    tracker.activeCellChanged.connect(() => this.render(), this);
    tracker.currentChanged.connect((_, panel) => this.watch(panel), this);
    void api.fields().then(
      specs => {
        this.specs = specs;
        this.render();
      },
      reason => this.say(`cellpipe server: ${reason instanceof Error ? reason.message : String(reason)}`)
    );
    this.render();
  }

  private watch(panel: NotebookPanel | null): void {
    if (panel) {
      this.cells.get(panel).changed.connect(() => this.render(false), this);
    }
    this.render();
  }

  private get cell(): Cell | null {
    const cell = this.tracker.activeCell;
    return cell && cell.model.type === 'code' ? cell : null;
  }

  private get index(): number {
    const panel = this.tracker.currentWidget;
    const cell = this.cell;
    return panel && cell ? panel.content.widgets.indexOf(cell) : -1;
  }

  private say(text: string): void {
    const node = this.node;
    node.replaceChildren();
    const heading = document.createElement('h2');
    heading.textContent = 'Pipeline step';
    const message = document.createElement('p');
    message.className = 'cp-muted';
    message.textContent = text;
    node.append(heading, message);
    this.shown = '';
  }

  /**
   * Rebuilds the form for the active cell. A refresh of the server's view (`force` false) rebuilds it
   * only when that cell's settings changed, so typing in the form is not lost to an unrelated edit.
   */
  render(force = true): void {
    const panel = this.tracker.currentWidget;
    const cell = this.cell;
    if (!panel || !cell) {
      this.say('Select a code cell to see and edit its pipeline step.');
      return;
    }
    const state = this.cells.get(panel);
    const view = state.cell(this.index);
    if (!this.specs || !view || view.type !== 'code') {
      this.say(state.error ? `cellpipe server: ${state.error}` : 'Reading the notebook…');
      return;
    }
    const shown = `${panel.id}/${cell.model.id}/${JSON.stringify(view.fields)}`;
    if (!force && shown === this.shown) {
      this.showProblems(state.view?.problems ?? []);
      return;
    }
    this.shown = shown;
    this.build(view, state.view?.defaults ?? {});
    this.showProblems(state.view?.problems ?? []);
  }

  private build(view: api.CellView, defaults: { [key: string]: string }): void {
    const specs = this.specs;
    if (!specs) {
      return;
    }
    const node = this.node;
    node.replaceChildren();
    this.inputs.clear();
    const heading = document.createElement('h2');
    heading.textContent = view.step ? `Pipeline step ${view.step}` : view.role ? `Pipeline: ${view.role} cell` : 'Pipeline step';
    node.appendChild(heading);
    const form = document.createElement('form');
    form.setAttribute('aria-label', 'cellpipe step settings');
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.apply();
    });
    const fields = view.fields ?? {};
    for (const spec of specs.fields) {
      const field = fields[spec.key];
      const row = document.createElement('div');
      row.className = 'cp-field';
      row.dataset.field = spec.key;
      const label = document.createElement('label');
      const inputId = `cp-field-${spec.key}`;
      label.htmlFor = inputId;
      label.textContent = spec.label;
      row.appendChild(label);
      const input = this.input(spec, specs.roles);
      input.id = inputId;
      input.name = spec.key;
      input.value = field?.value ?? '';
      input.className = 'cp-input';
      if (!(input instanceof HTMLSelectElement)) {
        const fallback = defaults[spec.key] ?? (spec.key === 'image' ? this.defaultImage() : '');
        input.placeholder = fallback ? `notebook default: ${fallback}` : '';
      }
      row.appendChild(input);
      if (field) {
        row.appendChild(sourceNote(field));
        row.dataset.source = field.source;
      }
      const error = document.createElement('div');
      error.className = 'cp-field-error';
      error.id = `${inputId}-error`;
      error.setAttribute('role', 'alert');
      input.setAttribute('aria-describedby', error.id);
      row.appendChild(error);
      form.appendChild(row);
      this.inputs.set(spec.key, { input, error, initial: input.value });
    }
    const where = document.createElement('div');
    where.className = 'cp-field';
    const whereLabel = document.createElement('label');
    whereLabel.htmlFor = 'cp-write-target';
    whereLabel.textContent = 'Apply writes';
    this.target = document.createElement('select');
    this.target.id = 'cp-write-target';
    this.target.className = 'cp-input';
    for (const [value, text] of [
      ['keep', 'each value where it is written'],
      ['metadata', "all of this cell's settings to metadata.cellpipe"],
      ['tags', "all of this cell's settings to tags"]
    ]) {
      const option = document.createElement('option');
      option.value = value;
      option.textContent = text;
      this.target.appendChild(option);
    }
    where.append(whereLabel, this.target);
    form.appendChild(where);
    const buttons = document.createElement('div');
    buttons.className = 'cp-buttons';
    const apply = document.createElement('button');
    apply.type = 'submit';
    apply.className = 'jp-mod-styled jp-mod-accept';
    apply.textContent = 'Apply';
    const clear = document.createElement('button');
    clear.type = 'button';
    clear.className = 'jp-mod-styled';
    clear.textContent = 'Clear';
    clear.title = "Remove every cellpipe setting of this cell (tags and metadata.cellpipe)";
    clear.addEventListener('click', () => {
      for (const { input } of this.inputs.values()) {
        input.value = '';
      }
      void this.apply();
    });
    buttons.append(apply, clear);
    form.appendChild(buttons);
    this.general = document.createElement('ul');
    this.general.className = 'cp-problems';
    form.appendChild(this.general);
    node.appendChild(form);
  }

  private input(spec: api.FieldSpec, roles: string[]): Input {
    if (spec.kind === 'switch' || spec.kind === 'role') {
      const select = document.createElement('select');
      const choices =
        spec.kind === 'switch'
          ? [['', 'default'], ['on', 'on'], ['off', 'off']]
          : [['', 'none (a step cell)'], ...roles.map(role => [role, role])];
      for (const [value, text] of choices) {
        const option = document.createElement('option');
        option.value = value;
        option.textContent = text;
        select.appendChild(option);
      }
      return select;
    }
    if (spec.kind === 'pairs' || spec.kind === 'lines') {
      const area = document.createElement('textarea');
      area.rows = 2;
      return area;
    }
    const input = document.createElement('input');
    input.type = 'text';
    return input;
  }

  /** Asks the server for the cell's new tags and metadata, and writes them unless a value is refused. */
  private async apply(): Promise<void> {
    const panel = this.tracker.currentWidget;
    const cell = this.cell;
    if (!panel || !cell) {
      return;
    }
    const values: { [key: string]: string } = {};
    for (const [key, { input }] of this.inputs) {
      values[key] = input.value;
    }
    const tags = cell.model.getMetadata('tags');
    const cellpipe = cell.model.getMetadata('cellpipe');
    let edited: api.EditedCell;
    try {
      edited = await api.editCell({
        tags: Array.isArray(tags) ? tags.map(String) : [],
        ...(isObject(cellpipe) ? { cellpipe } : {}),
        values,
        target: (this.target?.value ?? 'keep') as Target,
        path: panel.context.path,
        cell: this.index
      });
    } catch (reason) {
      this.showErrors({}, [`cellpipe server: ${reason instanceof Error ? reason.message : String(reason)}`]);
      return;
    }
    const refused = edited.problems.filter(problem => problem.severity === 'error');
    if (refused.length > 0) {
      this.showProblems(refused);
      return;
    }
    if (edited.tags.length > 0) {
      cell.model.setMetadata('tags', edited.tags);
    } else {
      cell.model.deleteMetadata('tags');
    }
    if (edited.cellpipe) {
      cell.model.setMetadata('cellpipe', edited.cellpipe);
    } else {
      cell.model.deleteMetadata('cellpipe');
    }
    this.shown = ''; // the server's next view of the cell redraws the form with its sources
    this.showProblems(edited.problems);
  }

  private showErrors(errors: { [key: string]: string }, general: string[] = []): void {
    for (const [key, { input, error }] of this.inputs) {
      error.textContent = errors[key] ?? '';
      input.classList.toggle('cp-invalid', Boolean(errors[key]));
      input.setAttribute('aria-invalid', errors[key] ? 'true' : 'false');
    }
    this.general?.replaceChildren(
      ...general.map(text => {
        const item = document.createElement('li');
        item.textContent = text;
        return item;
      })
    );
  }

  /** The reader's problems for the active cell: under their field when they name one. */
  private showProblems(problems: (api.Problem & { field?: string | null })[]): void {
    const index = this.index;
    const errors: { [key: string]: string } = {};
    const general: string[] = [];
    for (const problem of problems.filter(p => p.cell === index)) {
      const text = `${problem.severity === 'warning' ? 'warning: ' : ''}${problem.message}`;
      const field = problem.field ?? undefined;
      if (field && this.inputs.has(field)) {
        errors[field] = errors[field] ? `${errors[field]}; ${text}` : text;
      } else {
        general.push(text);
      }
    }
    this.showErrors(errors, general);
  }

  private specs: { fields: api.FieldSpec[]; roles: string[] } | null = null;
  private inputs = new Map<string, { input: Input; error: HTMLElement; initial: string }>();
  private general: HTMLUListElement | null = null;
  private target: HTMLSelectElement | null = null;
  /** Which cell and settings the form shows, so a refresh with nothing new keeps what is typed. */
  private shown = '';
}

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** "from tag cpu:500m", "from Kale tag limit:cpu:2", "from metadata.cellpipe (overrides tag cpu:1)". */
function sourceNote(field: api.FieldView): HTMLElement {
  const note = document.createElement('div');
  note.className = `cp-source cp-source-${field.source.replace('+', '-')}`;
  const where = SOURCE_TEXT[field.source] ?? field.source;
  note.textContent = field.tags.length > 0 ? `from ${where} ${field.tags.join(', ')}` : `from ${where}`;
  if (field.overridden.length > 0) {
    const over = document.createElement('span');
    over.className = 'cp-overridden';
    over.textContent = ` (overrides ${field.overridden.join(', ')}; Apply removes ${
      field.overridden.length > 1 ? 'them' : 'it'
    })`;
    note.appendChild(over);
  }
  return note;
}
