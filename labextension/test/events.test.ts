import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { RunEvent, RunView, isFinal } from '../src/events';

// The recorded streams the Python fold is checked against too (tests/test_events.py).
const STREAMS = join(__dirname, '..', '..', 'tests', 'event_streams');
const names = readdirSync(STREAMS)
  .filter(name => name.endsWith('.json') && !name.endsWith('.folded.json'))
  .map(name => name.replace(/\.json$/, ''));

const read = (file: string): unknown => JSON.parse(readFileSync(join(STREAMS, file), 'utf-8'));

describe('RunView on the recorded streams', () => {
  it('has streams to fold', () => {
    expect(names).toEqual(expect.arrayContaining(['local_succeeded', 'local_failed', 'local_cached', 'kfp_retry_cancelled']));
  });

  for (const name of names) {
    it(`folds ${name} exactly as the Python RunView does`, () => {
      const view = new RunView();
      for (const event of read(`${name}.json`) as RunEvent[]) {
        view.apply(event);
      }
      expect(JSON.parse(JSON.stringify(view))).toEqual(read(`${name}.folded.json`));
    });
  }
});

describe('RunView', () => {
  it('ignores a replayed event and marks unfinished steps cancelled only when the run is cancelled', () => {
    const view = new RunView(['a', 'b', 'c']);
    expect(view.apply({ seq: 1, type: 'step_succeeded', step: 'a' })).toBe(true);
    expect(view.apply({ seq: 2, type: 'step_started', step: 'b' })).toBe(true);
    expect(view.apply({ seq: 2, type: 'step_started', step: 'b' })).toBe(false);
    const failed = new RunView(['x', 'y']);
    failed.apply({ seq: 1, type: 'step_started', step: 'x' });
    failed.apply({ seq: 2, type: 'run_finished', state: 'failed' });
    expect(failed.states).toEqual({ x: 'running', y: 'pending' });
    view.apply({ seq: 3, type: 'run_finished', state: 'cancelled' });
    expect(view.states).toEqual({ a: 'succeeded', b: 'cancelled', c: 'cancelled' });
    expect(view.ended).toBe(true);
  });

  it('keeps a bounded log tail', () => {
    const view = new RunView(['a'], 3);
    for (let i = 0; i < 10; i++) {
      view.apply({ seq: i + 1, type: 'step_log', step: 'a', line: `l${i}` });
    }
    expect(view.step('a').log).toEqual(['l7', 'l8', 'l9']);
  });

  it('knows the final states', () => {
    expect(['succeeded', 'failed', 'cached', 'skipped', 'cancelled'].every(s => isFinal(s as never))).toBe(true);
    expect(['pending', 'queued', 'running'].some(s => isFinal(s as never))).toBe(false);
  });
});
