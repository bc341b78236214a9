/**
 * Lays out the server's graph JSON (`GET /cellpipe/api/graph`) top-down by level, as the KFP UI
 * and the notebook run monitor do. Pure, so the geometry is unit-tested without a browser.
 */

export interface GraphNode {
  id: string;
  cells: number[];
  level: number;
  resources?: { [key: string]: unknown };
}

export interface GraphEdge {
  source: string;
  target: string;
  kind: string;
  names?: string[];
}

export interface GraphParameter {
  name: string;
  type: string;
  default: unknown;
}

export interface Graph {
  name: string;
  nodes: GraphNode[];
  edges: GraphEdge[];
  parameters: GraphParameter[];
}

export interface Box {
  id: string;
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface Line {
  source: string;
  target: string;
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  kind: string;
}

export interface Layout {
  width: number;
  height: number;
  boxes: Box[];
  lines: Line[];
}

export const BOX_WIDTH = 140;
export const BOX_HEIGHT = 32;
const GAP_X = 20;
const GAP_Y = 36;
const MARGIN = 10;

/**
 * Boxes in rows by level (nodes keep the server's order within a row, rows are centred), and one
 * line per edge from the bottom of its source to the top of its target. Edges naming an unknown
 * node are dropped rather than drawn to nowhere.
 */
export function layoutGraph(graph: Pick<Graph, 'nodes' | 'edges'>): Layout {
  const rows = new Map<number, GraphNode[]>();
  for (const node of graph.nodes) {
    const row = rows.get(node.level) ?? [];
    row.push(node);
    rows.set(node.level, row);
  }
  const levels = [...rows.keys()].sort((a, b) => a - b);
  const widest = Math.max(0, ...[...rows.values()].map(row => row.length));
  const width = Math.max(1, widest) * (BOX_WIDTH + GAP_X) - GAP_X + 2 * MARGIN;
  const boxes: Box[] = [];
  levels.forEach((level, rowIndex) => {
    const row = rows.get(level) ?? [];
    const rowWidth = row.length * (BOX_WIDTH + GAP_X) - GAP_X;
    const start = (width - rowWidth) / 2;
    row.forEach((node, i) => {
      boxes.push({
        id: node.id,
        x: start + i * (BOX_WIDTH + GAP_X),
        y: MARGIN + rowIndex * (BOX_HEIGHT + GAP_Y),
        width: BOX_WIDTH,
        height: BOX_HEIGHT
      });
    });
  });
  const byId = new Map(boxes.map(box => [box.id, box]));
  const lines: Line[] = [];
  for (const edge of graph.edges) {
    const from = byId.get(edge.source);
    const to = byId.get(edge.target);
    if (from && to) {
      lines.push({
        source: edge.source,
        target: edge.target,
        x1: from.x + from.width / 2,
        y1: from.y + from.height,
        x2: to.x + to.width / 2,
        y2: to.y,
        kind: edge.kind
      });
    }
  }
  const height = levels.length === 0 ? 2 * MARGIN : levels.length * (BOX_HEIGHT + GAP_Y) - GAP_Y + 2 * MARGIN;
  return { width, height, boxes, lines };
}
