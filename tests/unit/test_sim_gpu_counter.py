"""Who samples on a shared virtual GPU (comfyui_sim.shared_gpu): flock files in a folder.

flock locks belong to an open file, so two SharedGpu objects in one process see each other as
two processes would; the SIGKILL case is proven with real processes in test_sim_gpu_packing.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from comfyui_sim.settings import SimSettings
from comfyui_sim.shared_gpu import SharedGpu


def test_nodes_count_as_sampling_only_while_inside_sampling(tmp_path: pathlib.Path) -> None:
    a, b, other = SharedGpu(tmp_path, "GPU-0"), SharedGpu(tmp_path, "GPU-0"), SharedGpu(
        tmp_path, "GPU-1")
    assert (a.count(), b.count()) == (0, 0)
    with a.sampling():
        assert (a.count(), b.count(), other.count()) == (1, 1, 0)
        with b.sampling(), other.sampling():
            assert (a.count(), b.count(), other.count()) == (2, 2, 1)
        assert (a.count(), b.count(), other.count()) == (1, 1, 0)
    assert (a.count(), b.count()) == (0, 0)
    for gpu in (a, b, other):
        gpu.close()


def test_sampling_is_reentrant(tmp_path: pathlib.Path) -> None:
    a, b = SharedGpu(tmp_path, "g"), SharedGpu(tmp_path, "g")
    with a.sampling():
        with a.sampling():
            assert b.count() == 1
        assert b.count() == 1  # still inside the outer block
    assert b.count() == 0
    a.close()
    b.close()


def test_a_closed_node_leaves_no_file_and_a_dead_ones_file_is_swept(
        tmp_path: pathlib.Path) -> None:
    a, b = SharedGpu(tmp_path, "g"), SharedGpu(tmp_path, "g")
    a.close()
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [b.path.name]
    # Given a file left by a process that no longer exists (pid 2**22 + 1 is above pid_max)
    (tmp_path / "g" / f"{2**22 + 1}-deadbeef.lock").touch()
    # When a live node counts, the file does not count and is removed
    assert b.count() == 0
    assert [p.name for p in (tmp_path / "g").iterdir()] == [b.path.name]
    b.close()


@pytest.mark.parametrize("gpu_id", ["", "..", "a/b", "GPU 0", "x" * 129])
def test_a_gpu_id_that_is_not_a_plain_name_is_refused(tmp_path: pathlib.Path,
                                                      gpu_id: str) -> None:
    with pytest.raises(ValueError):
        SharedGpu(tmp_path, gpu_id)


def test_settings_take_the_gpu_from_arguments_or_environment(tmp_path: pathlib.Path) -> None:
    alone = SimSettings.from_args(["--base-dir", str(tmp_path)], {})
    assert alone.gpu_id is None
    shared = SimSettings.from_args(["--base-dir", str(tmp_path), "--gpu-id", "GPU-7",
                                    "--gpu-dir", str(tmp_path / "gpus")], {})
    assert (shared.gpu_id, shared.gpu_dir) == ("GPU-7", tmp_path / "gpus")
    from_env = SimSettings.from_args(["--base-dir", str(tmp_path)], {
        "SIM_GPU_ID": "GPU-3", "SIM_GPU_DIR": str(tmp_path / "g")})
    assert (from_env.gpu_id, from_env.gpu_dir) == ("GPU-3", tmp_path / "g")
    assert os.fspath(alone.gpu_dir).endswith("comfyui-sim-gpus")
