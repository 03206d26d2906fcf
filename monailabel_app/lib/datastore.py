"""A local datastore that refuses bad images and labels before anything is stored.

MONAI Label's ``LocalDatastore`` copies whatever it is given: an uploaded
non-image becomes an "image", a label of the wrong shape replaces a good
one, an id such as ``../x`` writes outside the studies folder, and an
existing id is silently overwritten. This subclass checks first and answers
with an HTTP 4xx error that names the problem; on refusal nothing already
stored is touched.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from tokenseg.data.checks import check_image_label_pair, check_label_values, read_image_info

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_image_id(image_id: str, what: str = "image id") -> None:
    """Raise HTTP 400 for names that could leave the studies folder (``..``, separators, absolute paths)."""
    if not image_id or not _SAFE_ID.match(image_id) or ".." in image_id:
        raise HTTPException(
            status_code=400,
            detail=f"invalid {what} {image_id!r}: use letters, digits, '.', '_' and '-' only (no paths, no '..').",
        )


class CheckedDatastore(LocalDatastore):
    """``LocalDatastore`` that validates every image and label it is asked to store.

    Args:
        label_values: the task's label values (0, the background, is always allowed);
            a label with any other value is refused.
        args, kwargs: those of ``LocalDatastore``.
    """

    def __init__(self, *args, label_values: Iterable[int], **kwargs) -> None:
        self.label_values = {0, *(int(v) for v in label_values)}
        super().__init__(*args, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        check_image_id(image_id)
        if image_id in self.list_images():
            raise HTTPException(status_code=409, detail=f"image {image_id!r} exists already; it is not replaced.")
        try:
            read_image_info(image_filename)
        except (ValueError, FileNotFoundError) as error:
            raise HTTPException(status_code=400, detail=f"upload for image {image_id!r} rejected: {error}") from error
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_image_id(label_tag, "label tag")  # the tag names the labels' folder
        if image_id not in self.list_images():
            raise HTTPException(status_code=404, detail=f"image {image_id!r} not found; no label saved.")
        try:
            check_image_label_pair(self.get_image_uri(image_id), label_filename)
            check_label_values(label_filename, self.label_values)
        except (ValueError, FileNotFoundError) as error:
            raise HTTPException(
                status_code=400, detail=f"label for image {image_id!r} rejected, the stored label is kept: {error}"
            ) from error
        return super().save_label(image_id, label_filename, label_tag, label_info)
