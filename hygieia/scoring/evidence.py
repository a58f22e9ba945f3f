"""Explanation scores from the evidence that ingestion measured through the model (``evidence.npz``: each sampled
image's drop in ``predict_proba`` when one grid cell is filled in; see ``hygieia.submission.evidence``).

Box reliance (the headline explanation column) asks whether the model's own decision rests on the radiologists'
box: for one image, the mean drop of the cells inside the box (weighted by the share of each cell in the box)
minus the mean drop of the cells outside it; then minus the same quantity computed against the boxes of the
split's other opacity images, so that a model that always leans on where boxes usually lie, rather than on this
image's opacity, scores 0. A model that ignores the pixels loses nothing anywhere and scores 0; so does one whose
drops do not follow the box. Any map the submission hands in plays no part.

Faithfulness asks whether the submitted map agrees with that evidence: the Spearman rank correlation, over the
cells of one image, between the map's mass in each cell and the cell's drop (cf. the faithfulness correlation of
Bhatt et al., IJCAI 2020). A map unrelated to what the model uses scores 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from hygieia.boxes import box_mask


def cell_shares(cells: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(M,) the share of each cell's pixels that lie inside the boxes (``box_mask``'s pixel-centre rule)."""
    mask = box_mask(boxes, shape)
    return np.array([mask[top:bottom, left:right].mean() for top, left, bottom, right in cells])


def reliance_matrix(drops: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """(K, P): the reliance of each of K images' drops (K, M) on each of P boxes given as cell shares (P, M):
    share-weighted mean drop inside minus (1 - share)-weighted mean drop outside. A box that covers no cell,
    or every cell, contributes 0 for the side it lacks."""
    drops = np.asarray(drops, dtype=np.float64)
    inside, outside = np.asarray(shares, dtype=np.float64), 1.0 - np.asarray(shares, dtype=np.float64)
    mean_in = np.divide(drops @ inside.T, inside.sum(axis=1), out=np.zeros((len(drops), len(inside))),
                        where=inside.sum(axis=1) > 0)
    mean_out = np.divide(drops @ outside.T, outside.sum(axis=1), out=np.zeros((len(drops), len(outside))),
                         where=outside.sum(axis=1) > 0)
    return mean_in - mean_out


def box_reliance(drops: np.ndarray, own: np.ndarray, split: np.ndarray) -> np.ndarray:
    """(K,) per image: its reliance on its own box (``own``: (K, M) cell shares) minus its mean reliance over the
    split's opacity boxes (``split``: (P, M) cell shares), the box-blind reference."""
    if len(drops) == 0:
        return np.zeros(0)
    return np.diag(reliance_matrix(drops, own)) - reliance_matrix(drops, split).mean(axis=1)

def cell_mass(heatmap: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(M,) the map's total in each cell."""
    return np.array([heatmap[top:bottom, left:right].sum() for top, left, bottom, right in cells], dtype=np.float64)


def faithfulness(heatmap: np.ndarray, drops: np.ndarray, cells: np.ndarray) -> float:
    """Spearman correlation between the map's mass per cell and the model's drop per cell; 0 when either is
    constant (an all-zero map, or a model whose output no cell moves)."""
    mass = cell_mass(heatmap, cells)
    drops = np.asarray(drops, dtype=np.float64)
    if np.ptp(mass) == 0 or np.ptp(drops) == 0:
        return 0.0
    return float(stats.spearmanr(mass, drops).statistic)


@dataclasses.dataclass(frozen=True)
class Evidence:
    """A run's evidence on one split's scored opacity images (probes left out): ``ids`` (K,) of the sampled
    ones, their ``drops`` (K, M) and the shares of their own boxes in each cell (``own``, (K, M)); ``split``
    (P, M): the cell shares of every scored opacity image's boxes, the box-blind reference; ``cells`` (M, 4)."""
    ids: list[str]
    drops: np.ndarray
    own: np.ndarray
    split: np.ndarray
    cells: np.ndarray

    @classmethod
    def of(cls, evidence: dict, positive_ids: list[str], boxes: dict[str, np.ndarray],
           shape: tuple[int, int]) -> Evidence:
        cells = evidence["cells"]
        shares = {i: cell_shares(cells, boxes[i], shape) for i in positive_ids}
        keep = [k for k, i in enumerate(evidence["ids"]) if i in shares]
        ids = [str(evidence["ids"][k]) for k in keep]
        return cls(ids, evidence["drops"][keep], np.array([shares[i] for i in ids]).reshape(len(ids), len(cells)),
                   np.array(list(shares.values())).reshape(len(shares), len(cells)), cells)

    def reliance(self) -> np.ndarray:
        """``box_reliance`` of each sampled image."""
        return box_reliance(self.drops, self.own, self.split)

    def faithfulness(self, heatmaps: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
        """The sampled images that have a map (the explained true positives), and each map's faithfulness."""
        ids = [i for i in self.ids if i in heatmaps]
        rows = [self.ids.index(i) for i in ids]
        return ids, np.array([faithfulness(heatmaps[i], self.drops[k], self.cells) for i, k in zip(ids, rows)])
