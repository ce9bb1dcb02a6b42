"""The node farm's settings and cheap images: pure parts, no server."""

from __future__ import annotations

import pathlib

import pytest
from PIL import Image

from comfyui_sim import images
from comfyui_sim.settings import FarmSettings, SimSettings, from_command_line


def test_without_nodes_the_command_line_is_one_node_as_before(tmp_path: pathlib.Path) -> None:
    settings = from_command_line(["--base-dir", str(tmp_path), "--port", "9001"], {})
    assert settings == SimSettings.from_args(["--base-dir", str(tmp_path), "--port", "9001"], {})
    assert isinstance(settings, SimSettings) and not settings.cheap_images


@pytest.mark.parametrize(("base_port", "ports"), [(0, [0, 0, 0]), (9000, [9000, 9001, 9002])])
def test_each_farm_node_gets_its_port_and_its_own_folder(
        tmp_path: pathlib.Path, base_port: int, ports: list[int]) -> None:
    farm = from_command_line(["--nodes", "3", "--base-port", str(base_port), "--base-dir",
                              str(tmp_path), "--step-ms", "7"], {"SIM_CHEAP_IMAGES": "1"})
    assert isinstance(farm, FarmSettings) and farm.nodes == 3
    nodes = [farm.node_settings(i, farm.port_of(i)) for i in range(farm.nodes)]
    assert [n.port for n in nodes] == ports
    assert [n.base_dir for n in nodes] == [tmp_path / str(i) for i in range(3)]
    assert all(n.step_ms == 7 and n.cheap_images for n in nodes)


def test_a_farm_needs_at_least_one_node() -> None:
    with pytest.raises(SystemExit):
        from_command_line(["--nodes", "0"], {})


def test_cheap_images_keep_the_names_and_answer_but_write_one_tiny_png(
        tmp_path: pathlib.Path) -> None:
    frames = [images.generated(512, 512, 1, "a lighthouse", n) for n in range(2)]
    real = images.save_frames(frames, tmp_path / "real", "ComfyUI", "output", {"1": {}})
    cheap = images.save_frames(frames, tmp_path / "cheap", "ComfyUI", "output", {"1": {}},
                               cheap=True)
    assert cheap == real
    for entry in cheap:
        path = tmp_path / "cheap" / entry["filename"]
        assert path.read_bytes() == images.tiny_png()
        with Image.open(path) as img:
            assert img.size == (1, 1)

