/**
 * The side-panel form that edits the active code cell's `metadata.cellpipe`.
 *
 * Apply writes the metadata into the notebook model (the notebook becomes dirty like any edit);
 * the server's problems for the cell show under their fields once the notebook is saved, because
 * the server validates the saved file.
 */
import type { Cell } from '@jupyterlab/cells';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import {
  CellpipeMetadata,
  FIELDS,
  FieldErrors,
  FormValues,
  checkForm,
  fieldOfProblemTag,
  formToMetadata,
  metadataToForm
} from './metadata';
import type { PipelineStates } from './state';

export class StepForm extends Widget {
  constructor(
    private readonly tracker: INotebookTracker,
    private readonly states: PipelineStates,
    private readonly defaultImage: () => string
  ) {
    super();
    this.id = 'cellpipe-step-form';
    this.addClass('cp-StepForm');
    this.title.caption = 'cellpipe: step of the active cell';
    tracker.activeCellChanged.connect(() => this.render(), this);
    tracker.currentChanged.connect((_, panel) => this.watch(panel), this);
    this.render();
  }

  private watch(panel: NotebookPanel | null): void {
    if (panel) {
      this.states.get(panel).changed.connect(this.showProblems, this);
    }
    this.render();
  }

  private get cell(): Cell | null {
    const cell = this.tracker.activeCell;
    return cell && cell.model.type === 'code' ? cell : null;
  }

  /** Rebuilds the form for the active cell (cheap: a few dozen inputs). */
  render(): void {
    const node = this.node;
    node.replaceChildren();
    this.inputs.clear();
    const cell = this.cell;
    const heading = document.createElement('h2');
    heading.textContent = 'Pipeline step';
    node.appendChild(heading);
    if (!cell) {
      const empty = document.createElement('p');
      empty.className = 'cp-muted';
      empty.textContent = 'Select a code cell to tag it as a pipeline step.';
      node.appendChild(empty);
      return;
    }
    const values = metadataToForm(cell.model.getMetadata('cellpipe') as CellpipeMetadata | undefined);
    const form = document.createElement('form');
    form.setAttribute('aria-label', 'cellpipe step settings');
    form.addEventListener('submit', event => {
      event.preventDefault();
      this.apply();
    });
    for (const field of FIELDS) {
      const row = document.createElement('div');
      row.className = 'cp-field';
      const label = document.createElement('label');
      const inputId = `cp-field-${field.key}`;
      label.htmlFor = inputId;
      label.textContent = field.label;
      let input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;
      if (field.kind === 'switch' || field.kind === 'choice') {
        const select = document.createElement('select');
        const choices =
          field.kind === 'switch'
            ? [['', 'default'], ['on', 'on'], ['off', 'off']]
            : [['', 'none'], ...(field.options ?? []).map(option => [option, option])];
        for (const [value, text] of choices) {
          const option = document.createElement('option');
          option.value = value;
          option.textContent = text;
          select.appendChild(option);
        }
        input = select;
      } else if (field.kind === 'pairs' || field.kind === 'lines') {
        input = document.createElement('textarea');
        input.rows = 2;
      } else {
        input = document.createElement('input');
        input.type = 'text';
        input.placeholder = field.key === 'image' && this.defaultImage() ? this.defaultImage() : field.placeholder ?? '';
      }
      input.id = inputId;
      input.name = field.key;
      input.value = values[field.key] ?? '';
      input.className = 'cp-input';
      const error = document.createElement('div');
      error.className = 'cp-field-error';
      error.id = `${inputId}-error`;
      error.setAttribute('role', 'alert');
      input.setAttribute('aria-describedby', error.id);
      row.append(label, input, error);
      form.appendChild(row);
      this.inputs.set(field.key, { input, error });
    }
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
    clear.addEventListener('click', () => {
      for (const { input } of this.inputs.values()) {
        input.value = '';
      }
      this.apply();
    });
    buttons.append(apply, clear);
    form.appendChild(buttons);
    this.general = document.createElement('ul');
    this.general.className = 'cp-problems';
    form.appendChild(this.general);
    node.appendChild(form);
    this.showProblems();
  }

  private values(): FormValues {
    const values: FormValues = {};
    for (const [key, { input }] of this.inputs) {
      values[key] = input.value;
    }
    return values;
  }

  /** Checks what needs no server, then writes (or removes) the cell's `metadata.cellpipe`. */
  private apply(): void {
    const cell = this.cell;
    if (!cell) {
      return;
    }
    const values = this.values();
    const errors = checkForm(values);
    this.showErrors(errors);
    if (Object.keys(errors).length > 0) {
      return;
    }
    const previous = cell.model.getMetadata('cellpipe') as CellpipeMetadata | undefined;
    const metadata = formToMetadata(values, previous);
    if (metadata) {
      cell.model.setMetadata('cellpipe', metadata);
    } else {
      cell.model.deleteMetadata('cellpipe');
    }
  }

  private showErrors(errors: FieldErrors, general: string[] = []): void {
    for (const [key, { input, error }] of this.inputs) {
      error.textContent = errors[key] ?? '';
      input.classList.toggle('cp-invalid', Boolean(errors[key]));
      input.setAttribute('aria-invalid', errors[key] ? 'true' : 'false');
    }
    if (this.general) {
      this.general.replaceChildren(
        ...general.map(text => {
          const item = document.createElement('li');
          item.textContent = text;
          return item;
        })
      );
    }
  }

  /** The server's problems for the active cell: under their field when the tag names one. */
  private showProblems(): void {
    const panel = this.tracker.currentWidget;
    const cell = this.cell;
    if (!panel || !cell) {
      return;
    }
    const index = panel.content.widgets.indexOf(cell);
    const errors: FieldErrors = {};
    const general: string[] = [];
    for (const problem of this.states.get(panel).problemsOf(index)) {
      const text = `${problem.severity === 'warning' ? 'warning: ' : ''}${problem.message}`;
      const field = fieldOfProblemTag(problem.tag);
      if (field && this.inputs.has(field)) {
        errors[field] = errors[field] ? `${errors[field]}; ${text}` : text;
      } else {
        general.push(text);
      }
    }
    this.showErrors(errors, general);
  }

  private inputs = new Map<
    string,
    { input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement; error: HTMLElement }
  >();
  private general: HTMLUListElement | null = null;
}
