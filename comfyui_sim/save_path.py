"""Where an output node writes its files: ComfyUI's `folder_paths.get_save_image_path`.

Every saving node (images, animations, video, audio) names its files by these rules, so a
client that predicts or lists output names sees the same names as from a real server.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SavePath:
    """The folder, base name and first counter of the next file(s) under a prefix."""

    folder: pathlib.Path
    filename: str
    counter: int
    subfolder: str

    def name(self, extension: str, offset: int = 0, batch_number: int | None = None) -> str:
        """`<filename>_<counter:05>_.<extension>`, as every core saving node names its files."""
        base = self.filename
        if batch_number is not None:  # SaveImage and the audio savers expand %batch_num%
            base = base.replace("%batch_num%", str(batch_number))
        return f"{base}_{self.counter + offset:05}_.{extension}"


def expand_prefix(prefix: str, width: int, height: int, now: time.struct_time) -> str:
    """The %width%, %height% and date variables a prefix may hold (ComfyUI's compute_vars)."""
    for name, value in (("%width%", str(width)), ("%height%", str(height)),
                        ("%year%", str(now.tm_year)), ("%month%", f"{now.tm_mon:02}"),
                        ("%day%", f"{now.tm_mday:02}"), ("%hour%", f"{now.tm_hour:02}"),
                        ("%minute%", f"{now.tm_min:02}"), ("%second%", f"{now.tm_sec:02}")):
        prefix = prefix.replace(name, value)
    return prefix


def next_counter(names: Iterable[str], filename: str, prefix_length: int) -> int:
    """One more than the highest counter among the folder's entries that carry the prefix.

    ComfyUI's rule, quirks included: any entry (any extension, a folder too) named
    `<filename>_<digits>...` counts, the digits run to the next underscore, and an entry whose
    digits do not parse counts as 0. `prefix_length` is the length of the prefix's last path
    component before normalisation (it differs from len(filename) for a prefix ending in "/").
    """
    highest = 0
    for name in names:
        head = name[:prefix_length + 1]
        if os.path.normcase(head[:-1]) != os.path.normcase(filename) or head[-1:] != "_":
            continue
        try:
            digits = int(name[prefix_length + 1:].split("_")[0])
        except ValueError:
            digits = 0
        highest = max(highest, digits)
    return highest + 1


def save_path(filename_prefix: str, output_dir: pathlib.Path, width: int = 0, height: int = 0,
              ) -> SavePath:
    """Resolve a node's filename_prefix under output_dir; creates the folder when missing."""
    base = os.path.abspath(output_dir)
    if "%" in filename_prefix:
        filename_prefix = expand_prefix(filename_prefix, width, height, time.localtime())
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(base, subfolder)
    common = os.path.commonpath((base, os.path.abspath(folder)))
    if common != base:
        # The real message, paths included; it reaches the client as the exception message.
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed."
                        f"\n full_output_folder: {os.path.abspath(folder)}"
                        f"\n         output_dir: {base}"
                        f"\n         commonpath: {common}")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    counter = next_counter(names, filename, len(os.path.basename(filename_prefix)))
    return SavePath(pathlib.Path(folder), filename, counter, subfolder)
