"""Hygieia sample submission (tabular): logistic regression on the MobileNetV2 features.

Uses only ``X["features"]`` ((N, 1280) float32, computed on the whole radiograph, not on the crop:
they may carry what the crop leaves out); gives no explanation. See
sample_submission/README.md for the Model API.
"""

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


class Model:
    def __init__(self):
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))

    def fit(self, X, y):
        self.pipeline.fit(X["features"], y)

    def predict_proba(self, X):
        return self.pipeline.predict_proba(X["features"])[:, 1]
