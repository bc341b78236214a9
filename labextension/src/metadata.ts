/**
 * The mapping between the step form's text fields and a cell's structured `metadata.cellpipe`.
 *
 * Pure functions, so the round trip (metadata -> form -> metadata) is unit-tested without JupyterLab.
 * The form is text only: lists are comma-separated, key/value settings one per line. The server's
 * parser (`converter/notebook/tags.py` `parse_structured`) stays the judge of values; this module only gives
 * them the JSON shapes it accepts, and keeps every key it does not manage (e.g. `role`).
 */

export type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };
export type CellpipeMetadata = { [key: string]: JSONValue };

/** How a field is typed in and how it is written to the metadata. */
export type FieldKind = 'text' | 'choice' | 'list' | 'int' | 'switch' | 'pairs' | 'lines';

export interface FieldSpec {
  key: string;
  label: string;
  kind: FieldKind;
  /** For `pairs`: the separator between key and value as typed (`=` or `:`). */
  separator?: string;
  placeholder?: string;
  /** For `choice`: the values offered besides "none". */
  options?: readonly string[];
}

/** Every field of the form, in the order it shows them. */
export const FIELDS: readonly FieldSpec[] = [
  {
    key: 'role',
    label: 'Role (instead of a step)',
    kind: 'choice',
    options: ['imports', 'functions', 'parameters', 'metrics', 'skip']
  },
  { key: 'step', label: 'Step name', kind: 'text', placeholder: 'train' },
  { key: 'after', label: 'After steps', kind: 'list', placeholder: 'prep, load' },
  { key: 'cpu', label: 'CPU request', kind: 'text', placeholder: '500m' },
  { key: 'cpu_limit', label: 'CPU limit', kind: 'text', placeholder: '2' },
  { key: 'memory', label: 'Memory request', kind: 'text', placeholder: '4Gi' },
  { key: 'memory_limit', label: 'Memory limit', kind: 'text', placeholder: '8Gi' },
  { key: 'gpu', label: 'GPUs', kind: 'int', placeholder: '1' },
  { key: 'gpu_vendor', label: 'GPU vendor', kind: 'text', placeholder: 'nvidia.com/gpu' },
  { key: 'gpu_type', label: 'GPU type', kind: 'text', placeholder: 'nvidia-tesla-a100' },
  { key: 'image', label: 'Image', kind: 'text', placeholder: 'python:3.11-slim' },
  { key: 'packages', label: 'Packages', kind: 'list', placeholder: 'pandas, scikit-learn==1.5.2' },
  { key: 'retries', label: 'Retries', kind: 'int', placeholder: '3' },
  { key: 'timeout', label: 'Timeout', kind: 'text', placeholder: '30m' },
  { key: 'cache', label: 'Cache', kind: 'switch' },
  { key: 'report', label: 'HTML report', kind: 'switch' },
  { key: 'env', label: 'Environment (NAME=VALUE per line)', kind: 'pairs', separator: '=' },
  { key: 'secrets', label: 'Secrets (SECRET:KEY:ENV per line)', kind: 'lines' },
  { key: 'node_selector', label: 'Node selector (KEY=VALUE per line)', kind: 'pairs', separator: '=' },
  { key: 'tolerations', label: 'Tolerations (KEY=VALUE:EFFECT per line)', kind: 'lines' },
  { key: 'labels', label: 'Pod labels (KEY:VALUE per line)', kind: 'pairs', separator: ':' },
  { key: 'annotations', label: 'Pod annotations (KEY:VALUE per line)', kind: 'pairs', separator: ':' },
  { key: 'volumes', label: 'Volumes (PVC:/mount/path per line)', kind: 'lines' }
];

/** The form's state: one string per field key (empty means "not set"). */
export type FormValues = { [key: string]: string };

/** Problems found before asking the server, keyed by field. */
export type FieldErrors = { [key: string]: string };

const STEP_NAME = /^[a-z][a-z0-9_-]{0,62}$/;

function splitList(text: string): string[] {
  return text
    .split(',')
    .map(item => item.trim())
    .filter(item => item !== '');
}

function splitLines(text: string): string[] {
  return text
    .split('\n')
    .map(line => line.trim())
    .filter(line => line !== '');
}

function isRecord(value: JSONValue | undefined): value is { [key: string]: JSONValue } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** One line of a `lines` field from any shape the parser accepts (string or object). */
function lineOf(key: string, item: JSONValue): string {
  if (!isRecord(item)) {
    return String(item);
  }
  if (key === 'secrets') {
    return `${item.secret ?? ''}:${item.key ?? ''}:${item.env ?? ''}`;
  }
  if (key === 'tolerations') {
    return `${item.key ?? ''}=${item.value ?? ''}:${item.effect ?? ''}`;
  }
  return `${item.pvc ?? item.name ?? ''}:${item.mount_path ?? item.path ?? ''}`;
}

/** The form's strings for a cell's metadata (absent or malformed values give empty fields). */
export function metadataToForm(metadata: CellpipeMetadata | undefined): FormValues {
  const values: FormValues = {};
  for (const field of FIELDS) {
    const value = metadata?.[field.key];
    let text = '';
    if (value === undefined || value === null) {
      text = '';
    } else if (field.kind === 'list') {
      text = Array.isArray(value) ? value.map(String).join(', ') : String(value);
    } else if (field.kind === 'switch') {
      text = typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
    } else if (field.kind === 'pairs') {
      const sep = field.separator ?? '=';
      if (isRecord(value)) {
        text = Object.entries(value)
          .map(([k, v]) => `${k}${sep}${String(v)}`)
          .join('\n');
      } else {
        text = Array.isArray(value) ? value.map(String).join('\n') : String(value);
      }
    } else if (field.kind === 'lines') {
      text = (Array.isArray(value) ? value : [value]).map(item => lineOf(field.key, item)).join('\n');
    } else {
      text = String(value);
    }
    values[field.key] = text;
  }
  return values;
}

/** Checks that need no server: the step name's shape and whole numbers. */
export function checkForm(values: FormValues): FieldErrors {
  const errors: FieldErrors = {};
  const step = (values.step ?? '').trim();
  if (step !== '' && !STEP_NAME.test(step)) {
    errors.step =
      'a step name is lowercase letters, digits, - and _, starts with a letter, at most 63 characters';
  }
  for (const name of splitList(values.after ?? '')) {
    if (!STEP_NAME.test(name)) {
      errors.after = `${JSON.stringify(name)} is not a step name`;
    }
  }
  for (const field of FIELDS) {
    const text = (values[field.key] ?? '').trim();
    if (field.kind === 'int' && text !== '' && !/^\d+$/.test(text)) {
      errors[field.key] = 'a whole number';
    }
    if (field.kind === 'pairs') {
      const sep = field.separator ?? '=';
      const bad = splitLines(text).find(line => line.indexOf(sep) <= 0);
      if (bad !== undefined) {
        errors[field.key] = `${JSON.stringify(bad)} is not KEY${sep}VALUE`;
      }
    }
  }
  return errors;
}

/**
 * The metadata for a filled-in form: the fields it sets, over the keys of `previous` that the form
 * does not manage. Returns `undefined` when nothing is left (the cell then carries no
 * `metadata.cellpipe` at all).
 */
export function formToMetadata(
  values: FormValues,
  previous?: CellpipeMetadata
): CellpipeMetadata | undefined {
  const managed = new Set(FIELDS.map(field => field.key));
  const result: CellpipeMetadata = {};
  for (const [key, value] of Object.entries(previous ?? {})) {
    if (!managed.has(key)) {
      result[key] = value;
    }
  }
  for (const field of FIELDS) {
    const text = (values[field.key] ?? '').trim();
    if (text === '') {
      continue;
    }
    switch (field.kind) {
      case 'text':
      case 'choice':
        result[field.key] = text;
        break;
      case 'list':
        result[field.key] = splitList(text);
        break;
      case 'int':
        result[field.key] = /^\d+$/.test(text) ? Number(text) : text;
        break;
      case 'switch':
        result[field.key] = text === 'on' ? true : text === 'off' ? false : text;
        break;
      case 'pairs': {
        const sep = field.separator ?? '=';
        const pairs: { [key: string]: JSONValue } = {};
        for (const line of splitLines(text)) {
          const at = line.indexOf(sep);
          if (at > 0) {
            pairs[line.slice(0, at).trim()] = line.slice(at + 1).trim();
          }
        }
        result[field.key] = pairs;
        break;
      }
      case 'lines':
        result[field.key] = splitLines(text);
        break;
    }
  }
  return Object.keys(result).length > 0 ? result : undefined;
}

/** The field a server problem's tag points at (`metadata.cellpipe.cpu` -> `cpu`), if any. */
export function fieldOfProblemTag(tag: string | null): string | undefined {
  if (!tag) {
    return undefined;
  }
  const prefix = 'metadata.cellpipe.';
  const key = tag.startsWith(prefix) ? tag.slice(prefix.length).split('.')[0] : tag.split(':')[0];
  const aliases: { [key: string]: string } = {
    cpu_request: 'cpu',
    memory_request: 'memory',
    timeout_seconds: 'timeout',
    'cpu-limit': 'cpu_limit',
    'memory-limit': 'memory_limit',
    'gpu-type': 'gpu_type',
    'gpu-vendor': 'gpu_vendor',
    secret: 'secrets',
    toleration: 'tolerations',
    volume: 'volumes',
    label: 'labels',
    annotation: 'annotations',
    'node-selector': 'node_selector'
  };
  const name = aliases[key] ?? key;
  return FIELDS.some(field => field.key === name) ? name : undefined;
}

/** A short text for a cell's badge: the step name and the resources it asks for. */
export function badgeText(metadata: CellpipeMetadata | undefined): string | undefined {
  const step = metadata?.step;
  if (typeof step !== 'string' || step === '') {
    return undefined;
  }
  const parts = [step];
  if (metadata?.cpu !== undefined) {
    parts.push(`cpu ${String(metadata.cpu)}`);
  }
  if (metadata?.memory !== undefined) {
    parts.push(`mem ${String(metadata.memory)}`);
  }
  if (metadata?.gpu !== undefined) {
    parts.push(`gpu ${String(metadata.gpu)}`);
  }
  return parts.join(' · ');
}

/** A stable colour per step name, so every cell of a step shares its edge colour. */
export function stepColour(step: string): string {
  let hash = 0;
  for (let i = 0; i < step.length; i++) {
    hash = (hash * 31 + step.charCodeAt(i)) >>> 0;
  }
  return `hsl(${hash % 360}, 65%, 50%)`;
}

/**
 * The step each cell belongs to, from the cells' metadata and tags: a cell starting a step names
 * it, the untagged cells after it join it (the contract's rule), cells before the first step and
 * `skip`/`imports`/`functions`/`parameters`/`metrics` cells belong to none.
 */
export function stepsOfCells(
  cells: ReadonlyArray<{ cellpipe?: CellpipeMetadata; tags?: readonly string[]; type: string }>
): (string | undefined)[] {
  const roles = new Set(['skip', 'imports', 'functions', 'parameters', 'metrics', 'pipeline-parameters',
    'pipeline-metrics']);
  let current: string | undefined;
  return cells.map(cell => {
    if (cell.type !== 'code') {
      return undefined;
    }
    const structured = cell.cellpipe?.step;
    const tagged = (cell.tags ?? [])
      .map(tag => /^(?:step|block):(.*)$/.exec(tag)?.[1])
      .find(name => name !== undefined);
    const name = typeof structured === 'string' ? structured : tagged;
    if (name !== undefined && name !== '') {
      current = name;
      return current;
    }
    const role = cell.cellpipe?.role;
    if ((cell.tags ?? []).some(tag => roles.has(tag)) || (typeof role === 'string' && roles.has(role))) {
      return undefined;
    }
    return current;
  });
}
