import { describe, expect, it } from 'vitest';

import { badgeText, noteText, stepColour } from '../src/badges';

describe('badgeText', () => {
  it('shows requests, limits after a dash, and the GPU count with its type', () => {
    expect(badgeText('train', { cpu: '500m', cpu_limit: '2', memory: '1Gi', gpu: 1, gpu_type: 'a100' })).toBe(
      'train · cpu 500m–2 · mem 1Gi · gpu 1 × a100'
    );
  });

  it('marks a limit without a request and leaves out what is not set', () => {
    expect(badgeText('load', { memory_limit: '8Gi' })).toBe('load · mem ≤8Gi');
    expect(badgeText('load', {})).toBe('load');
  });
});

describe('stepColour', () => {
  it('is stable per name', () => {
    expect(stepColour('train')).toBe(stepColour('train'));
    expect(stepColour('train')).not.toBe(stepColour('load'));
  });
});

describe('noteText', () => {
  it('names order fallbacks and values that stay behind, then counts the other warnings', () => {
    expect(noteText([])).toBeUndefined();
    expect(noteText([{ mark: 'order' }])).toBe('⚠ notebook order');
    expect(noteText([{ mark: null }, { mark: 'boundary' }, { mark: 'order' }])).toBe(
      '⚠ cannot cross a step · notebook order · +1'
    );
    expect(noteText([{ mark: null }, { mark: null }])).toBe('⚠ 2 warnings');
  });
});
