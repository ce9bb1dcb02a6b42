"""Which GPU the sidecar reads under Nomad: the UUID the ComfyUI task wrote down."""

from __future__ import annotations

import pathlib

from node_sidecar.gpu import assigned_uuid


def test_the_first_assigned_uuid_is_the_sidecars_gpu(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gpu-uuid"
    path.write_text("GPU-1f2e, GPU-99aa\n")
    assert assigned_uuid(str(path)) == "GPU-1f2e"


def test_no_file_or_an_empty_one_means_not_yet(tmp_path: pathlib.Path) -> None:
    assert assigned_uuid(None) is None
    assert assigned_uuid(str(tmp_path / "missing")) is None
    (tmp_path / "empty").write_text("\n")
    assert assigned_uuid(str(tmp_path / "empty")) is None
