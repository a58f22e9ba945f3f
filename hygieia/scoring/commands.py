"""``hygieia score REF_DIR RES_DIR OUT_DIR``: score an ingestion output against a reference split."""

from __future__ import annotations

from hygieia.files import argument, require_dir, writable_dir
from hygieia.scoring.score import score, score_line


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score ingestion's output against a reference split",
        description="Write scores.json, scores.txt, detailed_scores.json and detailed_results.html to "
                    "OUT_DIR. A broken run (failed ingestion, bad predictions or heatmaps) is refused "
                    "with its cause.")
    parser.add_argument("ref_dir",
                        type=argument(require_dir, "reference data folder"),
                        help="reference_data/<split> folder (labels, boxes, meta, images)")
    parser.add_argument("res_dir",
                        type=argument(require_dir, "ingestion output folder"),
                        help="ingestion's output folder (predictions.csv, heatmaps.npz, ...)")
    parser.add_argument("out_dir",
                        type=argument(writable_dir, "output folder"),
                        help="folder for the scores and the detailed results")
    parser.add_argument("--per-image", action="store_true",
                        help="also name and show images: the ROC curve, galleries of the most confident "
                        "errors and of the best and worst maps, the per-image table (only for labels you "
                        "own; a published run never shows them)")
    parser.set_defaults(func=run)


def run(args) -> int:
    results = score(args.ref_dir, args.res_dir, args.out_dir, per_image=args.per_image)
    print(score_line(results["scores"]))
    return 0
