"""The leaderboard's columns: the keys that scoring writes to scores.json, in leaderboard order.

The bundle builds competition.yaml's leaderboard from this list, and ``bundle check`` compares the
two, so the scoring program and the leaderboard cannot drift apart.
"""

LEADERBOARD_COLUMNS = [
    {"key": "accuracy", "title": "Accuracy", "sorting": "desc", "precision": 4},
    {"key": "fbeta2", "title": "F-beta (2)", "sorting": "desc", "precision": 4},
    {"key": "recall", "title": "Recall", "sorting": "desc", "precision": 4},
    {"key": "precision", "title": "Precision", "sorting": "desc", "precision": 4},
    {"key": "auroc", "title": "AUROC", "sorting": "desc", "precision": 4},
    {"key": "activation_in_box", "title": "Activation in box", "sorting": "desc", "precision": 4},
    {"key": "iou_95", "title": "IoU of 95% rectangle", "sorting": "desc", "precision": 4},
    {"key": "cc_map", "title": "Component mAP", "sorting": "desc", "precision": 4},
    {"key": "pointing_game", "title": "Pointing game", "sorting": "desc", "precision": 4},
]
PRIMARY_KEY = "accuracy"
SCORE_KEYS = [column["key"] for column in LEADERBOARD_COLUMNS]
