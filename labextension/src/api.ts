/**
 * Calls to the cellpipe server extension (`/cellpipe/api/`, see docs/jupyter.md) through
 * JupyterLab's own server connection, so the page's auth (cookie + XSRF, or token) applies.
 */
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { RunEvent } from './events';
import type { Graph } from './layout';

export interface Problem {
  cell: number | null;
  tag: string | null;
  severity: 'error' | 'warning';
  message: string;
}

export interface Validation {
  path: string;
  valid: boolean;
  problems: Problem[];
}

export interface StepRecord {
  name: string;
  state: string;
  attempt: number;
  duration: number | null;
  message: string | null;
  metrics: { [name: string]: number };
}

export interface RunRecord {
  id: string;
  pipeline: string;
  notebook: string;
  engine: string;
  state: string;
  message: string | null;
  created: number;
  duration: number | null;
  parameters: { [name: string]: unknown };
  remote_id: string | null;
  metrics: { [name: string]: number };
  steps: StepRecord[];
}

/** A server answer that was not 2xx: its message, and the notebook's problems when it had some. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly problems: Problem[] = []
  ) {
    super(message);
  }
}

const settings = (): ServerConnection.ISettings => ServerConnection.makeSettings();

function apiUrl(endpoint: string): string {
  return URLExt.join(settings().baseUrl, 'cellpipe/api', endpoint);
}

async function call(endpoint: string, init: RequestInit = {}): Promise<Response> {
  const response = await ServerConnection.makeRequest(apiUrl(endpoint), init, settings());
  if (!response.ok) {
    let body: { message?: string; problems?: Problem[] } = {};
    try {
      body = await response.json();
    } catch {
      // not JSON: the status line is all we can say
    }
    throw new ApiError(body.message ?? response.statusText, response.status, body.problems ?? []);
  }
  return response;
}

function post(endpoint: string, body: object): Promise<Response> {
  return call(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

export async function validate(path: string): Promise<Validation> {
  return (await post('validate', { path })).json();
}

export async function graph(path: string): Promise<Graph> {
  return (await call(`graph?path=${encodeURIComponent(path)}`)).json();
}

/** The compiled KFP YAML and the file name the server suggests for it. */
export async function compile(path: string): Promise<{ yaml: string; filename: string }> {
  const response = await post('compile', { path });
  const disposition = response.headers.get('Content-Disposition') ?? '';
  const filename = /filename="([^"]+)"/.exec(disposition)?.[1] ?? 'pipeline.yaml';
  return { yaml: await response.text(), filename };
}

/** The server's named KFP endpoints (`c.Cellpipe.kfp_endpoints`); never their credentials. */
export interface KfpEndpoint {
  name: string;
  host: string;
  namespace: string | null;
  experiment: string | null;
}

export async function kfpEndpoints(): Promise<KfpEndpoint[]> {
  return (await (await call('kfp/endpoints')).json()).endpoints;
}

/** Starts a run; `endpoint` (KFP only) is the name of one of the server's endpoints, never a host. */
export async function startRun(
  path: string,
  engine: string,
  parameters: { [name: string]: unknown },
  endpoint = ''
): Promise<RunRecord> {
  return (await post('runs', { path, engine, parameters, ...(endpoint ? { endpoint } : {}) })).json();
}

export async function listRuns(limit = 20): Promise<RunRecord[]> {
  return (await (await call(`runs?limit=${limit}`)).json()).runs;
}

export async function getRun(id: string): Promise<RunRecord> {
  return (await call(`runs/${encodeURIComponent(id)}`)).json();
}

export async function cancelRun(id: string): Promise<void> {
  await call(`runs/${encodeURIComponent(id)}`, { method: 'DELETE' });
}

/**
 * Follows a run's event stream. `EventSource` resumes by itself after a lost connection (it sends
 * `Last-Event-ID`); the stream ends with `run_finished`, where this closes it so it does not
 * reconnect. The token rides in the URL only when the page has one (EventSource sends no headers).
 */
export function followRun(id: string, after: number, onEvent: (event: RunEvent) => void): () => void {
  const token = PageConfig.getToken();
  const query = `after=${after}` + (token ? `&token=${encodeURIComponent(token)}` : '');
  const source = new EventSource(`${apiUrl(`runs/${encodeURIComponent(id)}/events`)}?${query}`);
  const handle = (message: MessageEvent): void => {
    const event = JSON.parse(message.data) as RunEvent;
    onEvent(event);
    if (event.type === 'run_finished') {
      source.close();
    }
  };
  for (const type of [
    'run_started',
    'step_queued',
    'step_started',
    'step_log',
    'step_retrying',
    'step_succeeded',
    'step_failed',
    'step_cached',
    'step_skipped',
    'metrics',
    'run_finished'
  ]) {
    source.addEventListener(type, handle);
  }
  return () => source.close();
}

/** Where one setting of a cell is written: tags (plain or Kale) or `metadata.cellpipe`. */
export interface FieldView {
  value: string;
  source: 'tag' | 'kale' | 'metadata' | 'tag+metadata';
  tags: string[];
  overridden: string[];
}

export interface CellView {
  index: number;
  type: string;
  role?: string | null;
  step?: string | null;
  starts?: boolean;
  fields?: { [key: string]: FieldView };
}

/** The server's reading of every cell (`POST cells`): settings with sources, grouping, graph. */
export interface CellsView {
  path: string;
  valid: boolean;
  cells: CellView[];
  defaults: { [key: string]: string };
  graph: Graph | null;
  /** `mark`: `order` (the step keeps the notebook's order), `boundary` (a value or state stays behind). */
  problems: (Problem & { field: string | null; mark: 'order' | 'boundary' | null })[];
}

export interface FieldSpec {
  key: string;
  label: string;
  kind: 'text' | 'list' | 'int' | 'switch' | 'pairs' | 'lines' | 'role';
}

export interface EditedCell {
  tags: string[];
  cellpipe: { [key: string]: unknown } | null;
  problems: (Problem & { field: string | null })[];
}

/** The notebook as the browser has it (unsaved edits included), without outputs. */
export interface NotebookContent {
  metadata: { [key: string]: unknown };
  cells: { cell_type: string; source: string; metadata: { [key: string]: unknown } }[];
}

export async function cells(path: string, notebook?: NotebookContent): Promise<CellsView> {
  return (await post('cells', notebook ? { path, notebook } : { path })).json();
}

export async function editCell(body: {
  tags: string[];
  cellpipe?: { [key: string]: unknown };
  values: { [key: string]: string };
  target: 'keep' | 'tags' | 'metadata';
  path: string;
  cell: number;
}): Promise<EditedCell> {
  return (await post('cells/edit', body)).json();
}

let fieldSpecs: Promise<{ fields: FieldSpec[]; roles: string[] }> | null = null;

/** The step form's fields, asked once: the vocabulary lives on the server. */
export function fields(): Promise<{ fields: FieldSpec[]; roles: string[] }> {
  fieldSpecs ??= call('fields').then(response => response.json());
  fieldSpecs.catch(() => (fieldSpecs = null));
  return fieldSpecs;
}

export interface StepError {
  cell: number | null;
  ename: string | null;
  evalue: string | null;
  traceback: string[];
}

export interface RunResults {
  id: string;
  state: string;
  notebook: string | null;
  steps: { name: string; state: string; message: string | null; report: boolean; error: StepError | null }[];
}

export async function runResults(id: string): Promise<RunResults> {
  return (await call(`runs/${encodeURIComponent(id)}/results`)).json();
}

/** Writes the run's executed notebook inside the server root; its path there. */
export async function executedNotebook(id: string): Promise<string> {
  return (await (await post(`runs/${encodeURIComponent(id)}/notebook`, {})).json()).path;
}

/** A step's report page (a frame sends no headers: the token rides in the URL when the page has one). */
export function reportUrl(id: string, step: string): string {
  const token = PageConfig.getToken();
  const url = apiUrl(`runs/${encodeURIComponent(id)}/steps/${encodeURIComponent(step)}/report`);
  return token ? `${url}?token=${encodeURIComponent(token)}` : url;
}
