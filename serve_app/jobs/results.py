"""Where finished jobs' portraits are kept: an fsspec location (the app argument ``job_results``: a local folder by
default, ``s3://bucket/prefix`` in a cluster), one folder per job. The job's record keeps its result document with
each image replaced by the name of its file; ``document`` puts the images back, so a job's ``result`` is what the
synchronous call returns."""

from __future__ import annotations

import asyncio
import base64
import copy

import fsspec

IMAGE_FIELDS = {"image_base64": "png", "layout_mask_base64": "mask.png"}
"""The result document's image fields, and the suffix of the file each is kept in."""
IMAGE_LIST_FIELDS = {"layout_masks_base64": "mask"}
"""Its fields holding a list of images (one per person), and the stem of the suffix of each's file."""


class JobResults:
    def __init__(self, location: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(location, use_listings_cache=False)
        self.root = root.rstrip("/")

    async def keep(self, job_id: str, document: dict) -> dict:
        """Write the document's images to the job's folder; the document to record, naming their files."""
        return await asyncio.to_thread(self._keep, job_id, document)

    async def document(self, job_id: str, recorded: dict) -> dict:
        """The recorded document with its images read back."""
        return await asyncio.to_thread(self._document, job_id, recorded)

    async def delete(self, job_ids: list[str]) -> None:
        await asyncio.to_thread(self._delete, job_ids)

    def _folder(self, job_id: str) -> str:
        if not job_id.isalnum():  # ids are the stores' hex tokens; nothing else names a folder
            raise ValueError(f"{job_id!r} is not a job id")
        return f"{self.root}/{job_id}"

    def _keep(self, job_id: str, document: dict) -> dict:
        recorded = copy.deepcopy(document)
        self.fs.makedirs(self._folder(job_id), exist_ok=True)  # a local folder must exist; object stores have none
        for index, image in enumerate(recorded["images"]):
            image["files"] = {}
            for field, suffix in IMAGE_FIELDS.items():
                data = image.pop(field)
                if data is not None:
                    image["files"][field] = self._write(job_id, f"{index}.{suffix}", data)
            for field, stem in IMAGE_LIST_FIELDS.items():
                images = image.pop(field)
                if images is not None:
                    image["files"][field] = [
                        self._write(job_id, f"{index}.{stem}{person}.png", data) for person, data in enumerate(images)
                    ]
        return recorded

    def _write(self, job_id: str, name: str, data: str) -> str:
        self.fs.pipe_file(f"{self._folder(job_id)}/{name}", base64.b64decode(data))
        return name

    def _read(self, job_id: str, name: str) -> str:
        return base64.b64encode(self.fs.cat_file(f"{self._folder(job_id)}/{name}")).decode("ascii")

    def _document(self, job_id: str, recorded: dict) -> dict:
        document = copy.deepcopy(recorded)
        for image in document["images"]:
            files = image.pop("files")
            for field in IMAGE_FIELDS:
                name = files.get(field)
                image[field] = None if name is None else self._read(job_id, name)
            for field in IMAGE_LIST_FIELDS:
                names = files.get(field)
                image[field] = None if names is None else [self._read(job_id, name) for name in names]
        return document

    def _delete(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                self.fs.rm(self._folder(job_id), recursive=True)
            except FileNotFoundError:  # the job had no result (failed, canceled), or it was deleted already
                pass
