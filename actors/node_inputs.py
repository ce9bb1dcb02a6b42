"""A task's input files, put on the node that runs it before its prompt is submitted."""

from __future__ import annotations

from typing import Any

from actors.comfy_client import ComfyClient
from actors.tasks import TaskRecord
from actors.uploads import UploadStore, input_key
from comfy_service.errors import InputMissing
from comfy_service.inputs import NODE_SUBFOLDER, find_refs, node_file_name, with_node_files
from comfy_service.storage import BlobStore


class NodeInputs:
    def __init__(self, uploads: UploadStore, blobs: BlobStore, max_bytes: int) -> None:
        self.uploads = uploads
        self.blobs = blobs
        self.max_bytes = max_bytes

    async def stage(self, record: TaskRecord, node: ComfyClient) -> dict[str, Any]:
        """The graph to submit to `node`: each `upload:<id>` replaced by the name of the file
        just uploaded there (named after the task, so tasks never overwrite each other's)."""
        refs = find_refs(record.graph)
        if not refs:
            return record.graph
        names: dict[str, str] = {}
        for ordinal, upload_id in enumerate(dict.fromkeys(ref.upload_id for ref in refs)):
            upload = await self.uploads.get(upload_id)
            data = None if upload is None else await self.blobs.read(
                input_key(upload_id, upload.ext), self.max_bytes)
            if upload is None or data is None:
                raise InputMissing(f"input upload:{upload_id} is gone (it expired before the "
                                   f"task ran)", {"upload_id": upload_id})
            names[upload_id] = await node.upload_input(
                node_file_name(record.task_id, ordinal, upload.ext), NODE_SUBFOLDER, data,
                upload.content_type)
        return with_node_files(record.graph, names)
