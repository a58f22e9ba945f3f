"""The leaderboard's columns: the keys that scoring writes to scores.json, in leaderboard order.

Derived from the metric table (``hygieia.scoring.metrics.METRICS``). The bundle builds
competition.yaml's leaderboard and the scoring program's ``leaderboard.json`` (what ``bundle check``
reads, in a bare interpreter) from this list, so the scoring program and the leaderboard cannot drift
apart. A key in ``NULLABLE_KEYS`` is left out of scores.json when the split cannot measure it
(Codabench stores scores as non-null decimals).
"""

from hygieia.scoring.metrics import METRICS, PRIMARY_KEY

LEADERBOARD_COLUMNS = [{"key": m.key, "title": m.title, "sorting": m.sorting, "precision": m.precision}
                       for m in METRICS]
SCORE_KEYS = [column["key"] for column in LEADERBOARD_COLUMNS]
NULLABLE_KEYS = [m.key for m in METRICS if m.nullable]
__all__ = ["LEADERBOARD_COLUMNS", "NULLABLE_KEYS", "PRIMARY_KEY", "SCORE_KEYS"]
