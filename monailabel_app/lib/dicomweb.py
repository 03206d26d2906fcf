"""DICOMweb datastore (a PACS, or Orthanc) for a multi-phase model: one MR series per phase, one study per case.

MONAI Label's ``DICOMWebDatastore`` treats every series as one single-channel
image. TokenSeg takes the DCE-MRI phases as channels, and a DICOM series is
one phase (``tokenseg.data.dicom``), so this subclass:

- lists one image per study: its first phase series (lowest
  ``SeriesNumber``), the one labels (DICOM SEG) refer to;
- gives the model the study's phase series stacked as channels in
  ``SeriesNumber`` order (any phase's id works for inference: OHIF sends the
  series on screen);
- checks every series before use (missing slices, uneven or tilted slices,
  phases on different grids) and answers HTTP 400 naming the series;
- checks labels before anything is stored in the DICOMweb server: a label
  (NIfTI, OHIF's binary mask, or a DICOM SEG) whose grid does not match its
  series is refused; a SEG found in the server that does not fit its series
  is left out of training with an error in the log (nothing in the server is
  changed or deleted);
- refuses uploads through MONAI Label (``PUT /datastore/``): images belong in
  the DICOMweb server (``python tools/orthanc.py``, ``tokenseg.data.dicom.upload_series``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from typing import Any, Optional

import pydicom
import SimpleITK as sitk
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image, dicom_seg_to_itk_image
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from tokenseg.data.checks import check_image_label_pair
from tokenseg.data.dicom import label_on_image_grid, read_series, stack_phases

from lib.datastore import check_image_id

logger = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


class PhaseStackDICOMwebDatastore(DICOMWebDatastore):
    """``DICOMWebDatastore`` whose images are studies of ``num_phases`` MR series, stacked as channels."""

    def __init__(self, *args, num_phases: int = 3, **kwargs) -> None:
        self.num_phases = num_phases
        self._phases: dict[str, list[str]] = {}
        super().__init__(*args, **kwargs)

    # --- images -------------------------------------------------------------------------------------
    def _series(self, **filters) -> list[Dataset]:
        found = self._client.search_for_series(
            search_filters={**self._search_filter, **filters}, fields=["StudyInstanceUID", "SeriesNumber"]
        )
        return [Dataset.from_json(ds) for ds in found]

    def list_images(self) -> list[str]:
        studies: dict[str, list[Dataset]] = {}
        for ds in self._series():
            studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        return [self._order(series)[0] for series in studies.values()]

    @staticmethod
    def _order(series: list[Dataset]) -> list[str]:
        return [str(s.SeriesInstanceUID) for s in sorted(series, key=lambda s: int(s.get("SeriesNumber") or 0))]

    def phases_of(self, series_id: str) -> list[str]:
        """The phase series of ``series_id``'s study, in channel order; HTTP 404/400 when there is no such set."""
        if series_id in self._phases:
            return self._phases[series_id]
        check_image_id(series_id)
        match = self._series(SeriesInstanceUID=series_id)
        if not match:
            raise HTTPException(status_code=404, detail=f"series {series_id!r} not found in {self.name()}.")
        phases = self._order(self._series(StudyInstanceUID=str(match[0].StudyInstanceUID)))
        if len(phases) != self.num_phases:
            raise HTTPException(
                status_code=400,
                detail=f"study {match[0].StudyInstanceUID} of series {series_id} has {len(phases)} series matching "
                f"{self._search_filter}; the model needs {self.num_phases} (one per contrast phase).",
            )
        for uid in phases:
            self._phases[uid] = phases
        return phases

    def anchor_of(self, series_id: str) -> str:
        return self.phases_of(series_id)[0]

    def _series_dir(self, series_id: str) -> str:
        folder = os.path.realpath(os.path.join(self._datastore.image_path(), series_id))
        if not os.path.isdir(folder) or not os.listdir(folder):
            dicom_web_download_series(None, series_id, folder, self._client, self._fetch_by_frame)
        return folder

    def get_image_uri(self, image_id: str) -> str:
        phases = self.phases_of(image_id)
        stacked = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        with FileLock(os.path.join(self._datastore_path, ".phases.lock")):
            if os.path.exists(stacked):
                return stacked
            folders = [self._series_dir(uid) for uid in phases]
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    source = stack_phases(folders, os.path.join(tmp, f"{image_id}.nii.gz"))
                except ValueError as error:
                    raise HTTPException(status_code=400, detail=f"series {image_id} rejected: {error}") from error
                LocalDatastore.add_image(self, image_id, source, self._dicom_info(image_id))
        return stacked

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        try:
            pydicom.dcmread(image_filename, stop_before_pixels=True)
            problem = "a single DICOM file is not a series"
        except Exception:  # pydicom raises several kinds for non-DICOM input
            problem = "not a DICOM file"
        raise HTTPException(
            status_code=400,
            detail=f"upload of {image_id or os.path.basename(image_filename)!r} rejected ({problem}): this app reads "
            f"images from the DICOMweb server {self.name()}; store DICOM series there (STOW-RS).",
        )

    # --- labels -------------------------------------------------------------------------------------
    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[list[str]] = None) -> list[str]:
        return sorted({image for image, _ in self._seg_references()})

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[list[str]] = None) -> list[str]:
        labeled = set(self.get_labeled_images())
        return [i for i in self.list_images() if i not in labeled]

    def _seg_references(self) -> list[tuple[str, str]]:
        """(image series, SEG series) for every SEG in the server that refers to a listed image."""
        images = set(self.list_images())
        pairs = []
        for seg in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(seg)
            meta = Dataset.from_json(
                self._client.retrieve_series_metadata(str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID))[0]
            )
            referenced = meta.get("ReferencedSeriesSequence")
            if referenced and str(referenced[0].SeriesInstanceUID) in images:
                pairs.append((str(referenced[0].SeriesInstanceUID), str(seg.SeriesInstanceUID)))
        return pairs

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if label_tag != DefaultLabelTag.FINAL or not image_id:
            return super().get_label_uri(label_id, label_tag, image_id)
        target = os.path.join(self._datastore.label_path(DefaultLabelTag.FINAL), f"{image_id}.nii.gz")
        if os.path.exists(target):
            return os.path.realpath(target)
        folder = os.path.realpath(os.path.join(self._datastore.label_path(label_tag), label_id))
        if not os.path.isdir(folder) or not os.listdir(folder):
            dicom_web_download_series(None, label_id, folder, self._client, self._fetch_by_frame)
        try:
            label = self._seg_on_grid(folder, image_id, f"DICOM SEG {label_id}")
        except ValueError as error:
            logger.error(f"label {label_id} of image {image_id} left out (nothing changed in the server): {error}")
            return ""
        LocalDatastore.save_label(self, image_id, label, label_tag, self._dicom_info(label_id))
        os.unlink(label)
        return os.path.realpath(target)

    def _seg_on_grid(self, seg: str, image_id: str, what: str) -> str:
        """A DICOM SEG (file or folder) as a NIfTI on ``image_id``'s grid; ValueError when it does not fit."""
        try:
            converted = dicom_seg_to_itk_image(seg)
        except Exception as error:  # pydicom-seg raises several kinds for broken SEGs
            raise ValueError(f"{what}: not a readable DICOM SEG ({error}).") from error
        if not converted:
            raise ValueError(f"{what}: not a readable DICOM SEG.")
        reference = read_series(self._series_dir(image_id))
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        try:
            return label_on_image_grid(sitk.ReadImage(converted), reference, what, out)
        finally:
            os.unlink(converted)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        anchor = self.anchor_of(image_id)  # labels refer to the first phase; every phase has its grid
        series_dir = self._series_dir(anchor)
        suffix = "".join(pathlib.Path(label_filename).suffixes)
        converted = ""
        try:
            if suffix == ".bin":  # OHIF's mask: raw voxels in the series' own grid
                reference = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
                sitk.WriteImage(read_series(series_dir), reference)
                converted = binary_to_image(reference, label_filename)
                os.unlink(reference)
            elif _is_dicom_seg(label_filename):
                converted = self._seg_on_grid(label_filename, anchor, f"DICOM SEG {os.path.basename(label_filename)}")
            label = converted or label_filename
            check_image_label_pair(series_dir, label)
        except (ValueError, FileNotFoundError) as error:
            if converted:
                os.unlink(converted)
            raise HTTPException(
                status_code=400,
                detail=f"label for series {image_id} rejected, nothing stored in {self.name()}: {error}",
            ) from error
        try:
            return super().save_label(anchor, label, label_tag, label_info, label_id)
        finally:
            if converted:
                os.unlink(converted)


def _is_dicom_seg(path: str) -> bool:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID) == SEG_STORAGE
    except Exception:  # not DICOM at all
        return False
