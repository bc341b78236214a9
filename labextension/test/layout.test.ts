import { describe, expect, it } from 'vitest';

import { BOX_HEIGHT, layoutGraph } from '../src/layout';

const node = (id: string, level: number) => ({ id, level, cells: [] });

describe('layoutGraph', () => {
  it('puts levels in rows and centres each row', () => {
    const layout = layoutGraph({
      nodes: [node('load', 0), node('a', 1), node('b', 1), node('report', 2)],
      edges: [
        { source: 'load', target: 'a', kind: 'data' },
        { source: 'load', target: 'b', kind: 'data' },
        { source: 'a', target: 'report', kind: 'after' }
      ]
    });
    const box = (id: string) => layout.boxes.find(b => b.id === id)!;
    expect(box('load').y).toBeLessThan(box('a').y);
    expect(box('a').y).toBe(box('b').y);
    expect(box('a').x).toBeLessThan(box('b').x);
    // a row of one is centred between the two below it
    expect(box('load').x + box('load').width / 2).toBeCloseTo((box('a').x + box('b').x + box('b').width) / 2);
    expect(layout.lines).toHaveLength(3);
    const line = layout.lines.find(l => l.target === 'report')!;
    expect(line.kind).toBe('after');
    expect(line.y1).toBe(box('a').y + BOX_HEIGHT);
    expect(line.y2).toBe(box('report').y);
    for (const b of layout.boxes) {
      expect(b.x).toBeGreaterThanOrEqual(0);
      expect(b.x + b.width).toBeLessThanOrEqual(layout.width);
      expect(b.y + b.height).toBeLessThanOrEqual(layout.height);
    }
  });

  it('compacts sparse levels and drops edges to unknown nodes', () => {
    const layout = layoutGraph({
      nodes: [node('a', 0), node('b', 5)],
      edges: [{ source: 'a', target: 'ghost', kind: 'data' }]
    });
    expect(layout.boxes[1].y - layout.boxes[0].y).toBeLessThan(3 * BOX_HEIGHT);
    expect(layout.lines).toEqual([]);
  });

  it('draws an empty graph without throwing', () => {
    const layout = layoutGraph({ nodes: [], edges: [] });
    expect(layout.boxes).toEqual([]);
    expect(layout.width).toBeGreaterThan(0);
  });
});
