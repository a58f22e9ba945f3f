import os, sys
from pathlib import Path
import pytest
from test_starting_kit import execute, outputs, unpack_starting_kit

@pytest.mark.slow
def test_dump(tmp_path, phantom_prepared, weights_path, monkeypatch):
    from hygieia.bundle.build import build_bundle
    bundle = build_bundle(phantom_prepared, tmp_path / "bundle.zip").path
    kit = unpack_starting_kit(bundle, tmp_path)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_MOBILENET_WEIGHTS", str(weights_path))
    nb = execute(kit / "README.ipynb", kit)
    text = []
    for cell in nb.cells:
        if cell.cell_type == "code" and ("box_finder" in cell.source or "boxes_run" in cell.source):
            for o in cell.get("outputs", []):
                text.append(o.get("text") or o.get("data", {}).get("text/plain", ""))
    Path("/work/scratch/h20/nb_section6.txt").write_text("\n".join(text))
