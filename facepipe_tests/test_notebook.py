"""The cluster analysis notebook runs headless on a real digest of the sample photos."""

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from facepipe_tests.conftest import REPO, SAMPLE_FACES

NOTEBOOK = REPO / "notebooks" / "cluster_analysis.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.e2e
def test_the_cluster_analysis_notebook_runs_on_the_sample_group(sample_people, tmp_path):
    home = tmp_path / "home"  # the notebook writes thumbnails: on a copy of the shared store
    shutil.copytree(sample_people[0], home)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = (
        f'FACEPIPE_HOME = {str(home)!r}\nGROUP = "sample"\nPROFILE = "dlib"\nMONTAGE_FACES = 8\nMONTAGE_PEOPLE = 20'
    )

    # any cell error raises CellExecutionError and fails the test
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    text = "\n".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    people = sample_people[1]["people"]
    assert f"group 'sample': {SAMPLE_FACES} faces, {people} people, 0 faces without a person" in text
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) == 4  # sizes, montage, map, histogram
    assert len(list((home / "thumbnails").rglob("*.jpg"))) == SAMPLE_FACES
