"""The participants' Model API (``api``), loading a submission, Grad-CAM and the ingestion run."""
