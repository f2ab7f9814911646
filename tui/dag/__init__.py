"""A run's DAG drawn left to right in a terminal: pure layout and rendering, no Textual.

Layers are columns (a step's layer is its longest path from a root), so a wide fan-out grows
downwards and scrolls vertically, which an 80-column terminal handles far better than width.
The steps (the classic Sugiyama recipe, kept small):

1. break cycles (the engine rejects them, but a drawing must never hang on bad input);
2. layer by longest path; edges spanning several layers go through one dummy per layer, shared
   by all long edges of the same source, drawn as a horizontal line;
3. order each layer by barycenter sweeps, keeping the order with the fewest crossings;
4. put each node on the row of its topmost predecessor when free, so chains stay straight,
   and long edges on the row they end up on;
5. route every channel between two layers: each set of sources that share exactly the same
   targets gets one vertical lane, so a line never suggests an edge that does not exist; lanes
   whose rows never meet share a column, so a hundred parallel edges do not take a hundred
   columns.

Cells hold direction bits (up, down, left, right) and the box character is chosen from the
bits at the end, so crossings and junctions come out right whatever was drawn first.
"""

from __future__ import annotations

from tui.dag.build import DagNode, nodes_of, nodes_of_plan
from tui.dag.draw import render
from tui.dag.layout import MAX_LABEL, Direction, Layout, layout

__all__ = ["MAX_LABEL", "DagNode", "Direction", "Layout", "layout", "nodes_of", "nodes_of_plan", "render"]
