/**
 * The run event fold: the same fold as `converter.events.RunView` in Python, event for event. Both are
 * checked against the same recorded streams (tests/event_streams/*.json and their `.folded.json`), so
 * the panel shows a run exactly as the CLI, the widgets and the run store see it.
 */

export type StepState =
  | 'pending'
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'cached'
  | 'skipped'
  | 'cancelled';

/** One event as the server's stream sends it (`Event.to_json()`: absent fields are left out). */
export interface RunEvent {
  run_id?: string;
  seq: number;
  type: string;
  time?: number;
  step?: string;
  state?: string;
  attempt?: number;
  line?: string;
  message?: string;
  exit_code?: number;
  duration?: number;
  metrics?: { [name: string]: number };
  data?: { [key: string]: unknown };
  [key: string]: unknown;
}

/** The state a step is in after each step event. */
export const STEP_STATE_AFTER: { readonly [type: string]: StepState } = {
  step_queued: 'queued',
  step_started: 'running',
  step_retrying: 'queued',
  step_succeeded: 'succeeded',
  step_failed: 'failed',
  step_cached: 'cached',
  step_skipped: 'skipped'
};

const FINAL_STEP_STATES = new Set<string>(['succeeded', 'failed', 'cached', 'skipped', 'cancelled']);
const FINAL_RUN_STATES = new Set<string>(['succeeded', 'failed', 'cancelled']);

/** True once a step will not change state again. */
export function isFinal(state: StepState | undefined): boolean {
  return state !== undefined && FINAL_STEP_STATES.has(state);
}

export class StepView {
  state: StepState = 'pending';
  attempt: number | null = null;
  queued: number | null = null;
  started: number | null = null;
  finished: number | null = null;
  duration: number | null = null;
  message: string | null = null;
  exitCode: number | null = null;
  log: string[] = [];

  toJSON(): { [key: string]: unknown } {
    return {
      state: this.state,
      attempt: this.attempt,
      queued: this.queued,
      started: this.started,
      finished: this.finished,
      duration: this.duration,
      message: this.message,
      exit_code: this.exitCode,
      log: [...this.log]
    };
  }
}

/** A run folded from its events, one `apply` at a time; duplicates (seq not after the last) are ignored. */
export class RunView {
  constructor(steps: readonly string[] = [], readonly logLines = 200) {
    for (const name of steps) {
      this.step(name);
    }
  }

  runId = '';
  pipeline = '';
  engine = '';
  data: { [key: string]: unknown } = {};
  state = 'starting';
  message: string | null = null;
  started: number | null = null;
  finished: number | null = null;
  duration: number | null = null;
  /** Steps in the order the run named them. */
  steps = new Map<string, StepView>();
  metrics: { [name: string]: number } = {};
  stepMetrics: { [step: string]: { [name: string]: number } } = {};
  lastSeq = 0;

  step(name: string): StepView {
    let view = this.steps.get(name);
    if (!view) {
      view = new StepView();
      this.steps.set(name, view);
    }
    return view;
  }

  get ended(): boolean {
    return FINAL_RUN_STATES.has(this.state);
  }

  /** Each step's state, in step order. */
  get states(): { [step: string]: StepState } {
    return Object.fromEntries([...this.steps].map(([name, view]) => [name, view.state]));
  }

  /** Folds one event in; false if it was a duplicate and changed nothing. */
  apply(event: RunEvent): boolean {
    if (event.seq > 0 && event.seq <= this.lastSeq) {
      return false;
    }
    this.lastSeq = Math.max(this.lastSeq, event.seq);
    this.runId ||= event.run_id ?? '';
    const step = event.step !== undefined && event.step !== null ? this.step(event.step) : null;
    const time = event.time ?? null;
    if (event.type === 'run_started') {
      this.data = { ...(event.data ?? {}) };
      this.state = 'running';
      this.started = time;
      this.pipeline = String(this.data.pipeline ?? '');
      this.engine = String(this.data.engine ?? '');
      for (const name of (this.data.steps as unknown[] | undefined) ?? []) {
        this.step(String(name));
      }
    } else if (event.type === 'run_finished') {
      this.state = event.state || 'failed';
      this.message = event.message ?? null;
      this.finished = time;
      this.duration = event.duration ?? null;
      if (this.state === 'cancelled') {
        for (const view of this.steps.values()) {
          if (!isFinal(view.state)) {
            view.state = 'cancelled';
          }
        }
      }
    } else if (event.type === 'metrics') {
      const values = Object.fromEntries(Object.entries(event.metrics ?? {}).map(([k, v]) => [k, Number(v)]));
      Object.assign(this.metrics, values);
      Object.assign((this.stepMetrics[event.step ?? ''] ??= {}), values);
    } else if (event.type === 'step_log') {
      if (step && event.line !== undefined && event.line !== null && this.logLines > 0) {
        step.log.push(event.line);
        step.log.splice(0, Math.max(0, step.log.length - this.logLines));
      }
    } else if (step && event.type in STEP_STATE_AFTER) {
      step.state = STEP_STATE_AFTER[event.type];
      if (event.attempt !== undefined && event.attempt !== null) {
        step.attempt = event.attempt;
      }
      if (event.type === 'step_queued') {
        step.queued = time;
      } else if (event.type === 'step_started') {
        [step.started, step.finished, step.duration] = [time, null, null];
        [step.message, step.exitCode] = [null, null];
      } else {
        if (isFinal(step.state)) {
          step.finished = time;
        }
        if (event.duration !== undefined && event.duration !== null) {
          step.duration = event.duration;
        }
        if (event.message) {
          step.message = event.message;
        }
        if (event.exit_code !== undefined && event.exit_code !== null) {
          step.exitCode = event.exit_code;
        }
      }
    }
    return true;
  }

  /** The folded state as plain JSON: what `RunView.to_json()` gives in Python for the same stream. */
  toJSON(): { [key: string]: unknown } {
    return {
      run_id: this.runId,
      pipeline: this.pipeline,
      engine: this.engine,
      state: this.state,
      message: this.message,
      started: this.started,
      finished: this.finished,
      duration: this.duration,
      last_seq: this.lastSeq,
      metrics: { ...this.metrics },
      step_metrics: Object.fromEntries(Object.entries(this.stepMetrics).map(([k, v]) => [k, { ...v }])),
      steps: Object.fromEntries([...this.steps].map(([name, view]) => [name, view.toJSON()]))
    };
  }
}
