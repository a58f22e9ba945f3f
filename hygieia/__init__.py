"""Hygieia: pneumonia detection from chest X-rays, with an explanation score, as a Codabench bundle.

Subpackages, by what they are about:
- ``hygieia.rsna``: reading RSNA files (DICOM, label tables) and the RSNA-format phantom.
- ``hygieia.prepare``: selection, patient-disjoint splits, crops, MobileNetV2 features, dataset card.
- ``hygieia.submission``: the participants' Model API and the ingestion program.
- ``hygieia.scoring``: classification metrics, explanation metrics, detailed results.
- ``hygieia.bundle``: competition bundle build, offline check, local Codabench worker, demo.
- ``hygieia.experiment``: the shortcut experiment.

Importing this package is cheap: heavy libraries (torch) are imported where they are used.
"""

__version__ = "0.1.0"
