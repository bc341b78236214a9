import { describe, expect, it } from 'vitest';

import {
  FIELDS,
  badgeText,
  checkForm,
  fieldOfProblemTag,
  formToMetadata,
  metadataToForm,
  stepColour,
  stepsOfCells
} from '../src/metadata';

describe('formToMetadata', () => {
  it('writes the structured shapes parse_structured accepts', () => {
    const metadata = formToMetadata({
      step: ' train ',
      after: 'prep, load',
      cpu: '500m',
      memory: '4Gi',
      gpu: '2',
      retries: '0',
      cache: 'off',
      report: 'on',
      packages: 'pandas, scikit-learn==1.5.2,',
      env: 'A=1\n\nB = x=y',
      labels: 'team:ml',
      secrets: 'db:password:DB_PASSWORD',
      tolerations: 'gpu=true:NoSchedule',
      volumes: 'data:/mnt/data'
    });
    expect(metadata).toEqual({
      step: 'train',
      after: ['prep', 'load'],
      cpu: '500m',
      memory: '4Gi',
      gpu: 2,
      retries: 0,
      cache: false,
      report: true,
      packages: ['pandas', 'scikit-learn==1.5.2'],
      env: { A: '1', B: 'x=y' },
      labels: { team: 'ml' },
      secrets: ['db:password:DB_PASSWORD'],
      tolerations: ['gpu=true:NoSchedule'],
      volumes: ['data:/mnt/data']
    });
  });

  it('leaves out empty fields and returns undefined when nothing is set', () => {
    expect(formToMetadata({ step: '', cpu: '  ' })).toBeUndefined();
    expect(formToMetadata({ step: 'a', cache: '' })).toEqual({ step: 'a' });
  });

  it('keeps the keys the form does not manage, and drops managed ones that were cleared', () => {
    const previous = { search: { C: 'loguniform(0.01, 10)' }, cpu: '1', step: 'old' };
    expect(formToMetadata({ step: 'new' }, previous)).toEqual({ search: { C: 'loguniform(0.01, 10)' }, step: 'new' });
  });

  it('passes a non-numeric count through for the server to reject', () => {
    expect(formToMetadata({ gpu: 'two' })).toEqual({ gpu: 'two' });
  });
});

describe('metadataToForm', () => {
  it('round-trips every field kind', () => {
    const metadata = {
      role: 'imports',
      step: 'train',
      after: ['prep'],
      gpu: 1,
      cache: true,
      env: { A: '1' },
      annotations: { 'a.io/x': 'y' },
      secrets: ['s:k:E'],
      volumes: ['pvc:/data']
    };
    expect(formToMetadata(metadataToForm(metadata))).toEqual(metadata);
  });

  it('reads the other shapes the parser accepts', () => {
    const form = metadataToForm({
      after: 'prep',
      packages: 'a,b',
      secrets: [{ secret: 's', key: 'k', env: 'E' }],
      tolerations: [{ key: 'k', value: 'v', effect: 'NoSchedule' }],
      volumes: [{ pvc: 'p', mount_path: '/m' }],
      env: 'A=1'
    });
    expect(form.after).toBe('prep');
    expect(form.packages).toBe('a,b');
    expect(form.secrets).toBe('s:k:E');
    expect(form.tolerations).toBe('k=v:NoSchedule');
    expect(form.volumes).toBe('p:/m');
    expect(form.env).toBe('A=1');
  });

  it('gives an empty string for every field of a cell without metadata', () => {
    const form = metadataToForm(undefined);
    expect(Object.keys(form).sort()).toEqual(FIELDS.map(f => f.key).sort());
    expect(Object.values(form).every(v => v === '')).toBe(true);
  });
});

describe('checkForm', () => {
  it('flags bad step names, after names, counts and pairs', () => {
    const errors = checkForm({ step: 'Train', after: 'ok, 2bad', gpu: '1.5', env: 'NOVALUE', labels: 'a:b' });
    expect(Object.keys(errors).sort()).toEqual(['after', 'env', 'gpu', 'step']);
  });

  it('accepts a valid form', () => {
    expect(checkForm({ step: 'load_data-2', after: 'prep', retries: '3', env: 'A=1' })).toEqual({});
  });
});

describe('fieldOfProblemTag', () => {
  it('maps structured and plain tags to form fields', () => {
    expect(fieldOfProblemTag('metadata.cellpipe.cpu')).toBe('cpu');
    expect(fieldOfProblemTag('metadata.cellpipe.timeout_seconds')).toBe('timeout');
    expect(fieldOfProblemTag('memory-limit')).toBe('memory_limit');
    expect(fieldOfProblemTag('secret:x:y:Z')).toBe('secrets');
    expect(fieldOfProblemTag('metadata.cellpipe.role')).toBe('role');
    expect(fieldOfProblemTag('metadata.cellpipe.search')).toBeUndefined();
    expect(fieldOfProblemTag(null)).toBeUndefined();
  });
});

describe('badges and colours', () => {
  it('names the step and its resources', () => {
    expect(badgeText({ step: 'train', cpu: '2', memory: '4Gi', gpu: 1 })).toBe('train · cpu 2 · mem 4Gi · gpu 1');
    expect(badgeText({ cpu: '2' })).toBeUndefined();
  });

  it('gives one stable colour per step', () => {
    expect(stepColour('train')).toBe(stepColour('train'));
    expect(stepColour('train')).not.toBe(stepColour('prep'));
  });

  it('assigns untagged cells to the step above, and role cells to none', () => {
    const steps = stepsOfCells([
      { type: 'code', tags: ['imports'] },
      { type: 'code' },
      { type: 'code', cellpipe: { step: 'load' } },
      { type: 'markdown' },
      { type: 'code' },
      { type: 'code', tags: ['block:train'] },
      { type: 'code', tags: ['skip'] },
      { type: 'code', tags: ['step:'] }
    ]);
    expect(steps).toEqual([undefined, undefined, 'load', undefined, 'load', 'train', undefined, 'train']);
  });

  it('lets the structured step win over a tag', () => {
    expect(stepsOfCells([{ type: 'code', tags: ['step:a'], cellpipe: { step: 'b' } }])).toEqual(['b']);
  });
});
