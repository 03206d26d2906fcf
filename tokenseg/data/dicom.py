"""Multi-phase MRI between NIfTI and DICOM: one MR series per contrast phase, all in one study.

A DICOM series holds one channel; TokenSeg takes the DCE-MRI phases as
channels. So a case becomes one study with one MR series per phase
(``SeriesNumber`` 1, 2, 3 = pre-contrast, early and late post-contrast; each
phase is its own series that a viewer such as OHIF shows and an annotator
can scroll), sharing one ``FrameOfReferenceUID`` and one slice grid. The
model's input is rebuilt by stacking the study's phase series in
``SeriesNumber`` order (``stack_phases``). The first series (pre-contrast) is
the one labels refer to; the others have the same grid, so a mask fits them
all.

Geometry comes from the NIfTI affine (RAS) turned into DICOM's LPS:
``ImagePositionPatient`` per slice, ``ImageOrientationPatient``,
``PixelSpacing``, ``SliceThickness``. Intensities are stored as 16-bit
integers with one linear scale per case (shared by its phases, so phase
contrast is kept); the bundle normalises each channel, which makes the scale
invisible to the model.

``check_series`` refuses what cannot be one volume (not DICOM, mixed series,
missing or uneven slices, tilted or differing slices) with a message naming
the file and the problem; ``upload_series`` checks before anything is sent.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = [
    "MR_IMAGE_STORAGE",
    "PHASE_NAMES",
    "check_series",
    "label_on_image_grid",
    "nifti_to_dicom_study",
    "read_series",
    "stack_phases",
    "upload_demo_cases",
    "upload_series",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PHASE_NAMES = ("pre-contrast", "early post-contrast", "late post-contrast")
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS
TOLERANCE = 1e-3  # mm, and direction cosines


def _dataset(path: Path, meta: dict, slice_index: int, pixels: np.ndarray, position: np.ndarray) -> FileDataset:
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, file_meta.MediaStorageSOPInstanceUID
    for key, value in meta.items():
        setattr(ds, key, value)
    ds.InstanceNumber = slice_index + 1
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.SliceLocation = f"{position[2]:.6f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def nifti_to_dicom_study(
    nifti: str | os.PathLike, out_dir: str | os.PathLike, patient_id: str | None = None
) -> dict[str, Path]:
    """Write a NIfTI case (X, Y, Z) or (X, Y, Z, phases) as one MR study, one series folder per phase.

    Returns ``{SeriesInstanceUID: folder}`` in phase order (the first is the labelled series).
    """
    nifti = Path(nifti)
    image = nib.load(str(nifti))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(f"{nifti}: expected a 3D image or 3D phases as the 4th axis, got shape {data.shape}.")
    affine = LPS @ image.affine[:3, :3], LPS @ image.affine[:3, 3]
    spacing = np.linalg.norm(affine[0], axis=0)
    row_dir, col_dir = affine[0][:, 0] / spacing[0], affine[0][:, 1] / spacing[1]  # along columns (i), rows (j)
    scale = 65535.0 / max(float(data.max()), 1e-6) if data.min() >= 0 else None
    if scale is None:
        raise ValueError(f"{nifti}: negative intensities; MR series here store unsigned values.")
    name = patient_id or nifti.name.split(".")[0]
    study_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    out = {}
    for phase in range(data.shape[3]):
        series_uid = generate_uid()
        folder = Path(out_dir) / f"{name}_phase{phase}"
        folder.mkdir(parents=True, exist_ok=False)
        description = PHASE_NAMES[phase] if data.shape[3] == len(PHASE_NAMES) else f"phase {phase}"
        meta = {
            "PatientName": name, "PatientID": name, "PatientBirthDate": "", "PatientSex": "F",
            "StudyInstanceUID": study_uid, "StudyID": "1", "StudyDate": now.strftime("%Y%m%d"),
            "StudyTime": now.strftime("%H%M%S"), "AccessionNumber": "", "ReferringPhysicianName": "",
            "StudyDescription": "TokenSeg demo: breast DCE-MRI",
            "SeriesInstanceUID": series_uid, "SeriesNumber": phase + 1, "SeriesDescription": description,
            "Modality": "MR", "Manufacturer": "TokenSeg (synthetic)", "BodyPartExamined": "BREAST",
            "FrameOfReferenceUID": frame_uid, "PositionReferenceIndicator": "",
            "ImageType": ["DERIVED", "SECONDARY"], "ScanningSequence": "GR", "SequenceVariant": "NONE",
            "ScanOptions": "", "MRAcquisitionType": "3D", "TemporalPositionIdentifier": phase + 1,
            "NumberOfTemporalPositions": data.shape[3],
            "ImageOrientationPatient": [f"{v:.6f}" for v in (*row_dir, *col_dir)],
            "PixelSpacing": [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"],  # row spacing (j), column spacing (i)
            "SliceThickness": f"{spacing[2]:.6f}", "SpacingBetweenSlices": f"{spacing[2]:.6f}",
        }
        pixels = np.clip(np.rint(data[..., phase] * scale), 0, 65535).astype(np.uint16)
        for k in range(pixels.shape[2]):
            position = affine[1] + k * affine[0][:, 2]
            path = folder / f"slice_{k:04d}.dcm"
            _dataset(path, meta, k, pixels[:, :, k].T, position).save_as(path, write_like_original=False)
        out[series_uid] = folder
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def check_series(folder: str | os.PathLike) -> list[Path]:
    """The files of one DICOM image series, ordered along the slice normal; ValueError naming what is wrong."""
    folder = Path(folder)
    files = _files(folder) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder}: no files; expected one DICOM series.")
    slices = []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as error:  # pydicom raises several kinds for non-DICOM input
            raise ValueError(f"{path}: not a DICOM file ({error}).") from error
        missing = [k for k in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                               "Rows", "Columns") if k not in ds]
        if missing:
            raise ValueError(f"{path}: not an image slice with geometry (missing {', '.join(missing)}).")
        slices.append((path, ds))
    series = {str(ds.SeriesInstanceUID) for _, ds in slices}
    if len(series) > 1:
        raise ValueError(f"{folder}: files of {len(series)} series mixed; expected one.")
    first = slices[0][1]
    orientation = np.array(first.ImageOrientationPatient, float)
    for path, ds in slices:
        same = (np.allclose(np.array(ds.ImageOrientationPatient, float), orientation, atol=TOLERANCE)
                and np.allclose(np.array(ds.PixelSpacing, float), np.array(first.PixelSpacing, float), atol=TOLERANCE)
                and (ds.Rows, ds.Columns) == (first.Rows, first.Columns))
        if not same:
            raise ValueError(f"{path}: orientation, pixel spacing or size differs from {slices[0][0].name}.")
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda s: float(np.dot(np.array(s[1].ImagePositionPatient, float), normal)))
    positions = np.array([np.array(ds.ImagePositionPatient, float) for _, ds in slices])
    if len(slices) > 1:
        steps = np.diff(positions, axis=0)
        along = steps @ normal
        if np.any(np.linalg.norm(steps - along[:, None] * normal, axis=1) > TOLERANCE):
            raise ValueError(f"{folder}: slices are not stacked along the slice normal (tilted or shifted slices).")
        if along.min() < TOLERANCE:
            raise ValueError(f"{folder}: two slices at the same position ({len(slices)} files).")
        gap = int(np.argmax(along))
        if along.max() - along.min() > max(TOLERANCE, 0.01 * along.min()):
            raise ValueError(
                f"{folder}: missing slices: slice spacing varies from {along.min():.3f} to {along.max():.3f} mm "
                f"(gap after {slices[gap][0].name}, {len(slices)} slices)."
            )
    return [path for path, _ in slices]


def read_series(folder: str | os.PathLike) -> sitk.Image:
    """One checked DICOM series as a SimpleITK image (LPS geometry from the headers)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in check_series(folder)])
    return reader.Execute()


def _ras_affine(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS @ np.array(image.GetOrigin())
    return affine


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return a.GetSize() == b.GetSize() and np.allclose(_ras_affine(a), _ras_affine(b), atol=TOLERANCE)


def stack_phases(folders: list[str | os.PathLike], out_file: str | os.PathLike) -> str:
    """Write the phase series (in channel order) as one NIfTI (X, Y, Z, phases) in RAS, the model's input."""
    images = [read_series(f) for f in folders]
    for folder, image in zip(folders[1:], images[1:]):
        if not _same_grid(images[0], image):
            raise ValueError(f"{folder}: its slice grid differs from the first phase's ({folders[0]}); cannot stack.")
    data = np.stack([sitk.GetArrayFromImage(i).transpose(2, 1, 0) for i in images], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(data, _ras_affine(images[0])), str(out_file))
    return str(out_file)


def label_on_image_grid(label: sitk.Image, reference: sitk.Image, what: str, out_file: str | os.PathLike) -> str:
    """Put a segmentation (e.g. read from a DICOM SEG, which may hold only its non-empty slices) onto its
    image's grid and write it as NIfTI; ValueError naming ``what`` when it does not lie on that grid."""
    if not np.allclose(label.GetSpacing(), reference.GetSpacing(), rtol=1e-3):
        raise ValueError(f"{what}: spacing {label.GetSpacing()} does not match its image's {reference.GetSpacing()}.")
    if not np.allclose(label.GetDirection(), reference.GetDirection(), atol=TOLERANCE):
        raise ValueError(f"{what}: orientation {label.GetDirection()} does not match its image's.")
    start = np.array(reference.TransformPhysicalPointToContinuousIndex(label.GetOrigin()))
    end = start + np.array(label.GetSize()) - 1
    if np.any(np.abs(start - np.rint(start)) > 0.01) or np.any(np.rint(start) < 0) or np.any(
        np.rint(end) > np.array(reference.GetSize()) - 1
    ):
        raise ValueError(
            f"{what}: its {label.GetSize()} voxels at origin {label.GetOrigin()} do not lie on its image's grid "
            f"({reference.GetSize()} voxels at origin {reference.GetOrigin()})."
        )
    result = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)  # (z, y, x)
    x0, y0, z0 = (int(v) for v in np.rint(start))
    part = sitk.GetArrayFromImage(label).astype(np.uint8)
    result[z0:z0 + part.shape[0], y0:y0 + part.shape[1], x0:x0 + part.shape[2]] = part
    nib.save(nib.Nifti1Image(result.transpose(2, 1, 0), _ras_affine(reference)), str(out_file))
    return str(out_file)


def upload_series(folders: list[str | os.PathLike], dicomweb_url: str) -> list[str]:
    """Check every series, then STOW-RS them to a DICOMweb server; returns the SeriesInstanceUIDs.

    Nothing is sent unless every file of every series passes ``check_series``. The server keeps
    what it has (Orthanc here runs with ``OverwriteInstances`` false).
    """
    from dicomweb_client.api import DICOMwebClient

    checked = [check_series(f) for f in folders]
    client = DICOMwebClient(url=dicomweb_url)
    uids = []
    for files in checked:
        datasets = [pydicom.dcmread(str(p)) for p in files]
        client.store_instances(datasets)
        uids.append(str(datasets[0].SeriesInstanceUID))
    return uids


def upload_demo_cases(dataset_dir: str | os.PathLike, dicomweb_url: str, count: int, split_dir: str = "imagesTr",
                      work_dir: str | os.PathLike | None = None) -> list[str]:
    """Convert the first ``count`` demo images to DICOM studies and upload them; returns the case names."""
    import tempfile

    cases = sorted((Path(dataset_dir) / split_dir).glob("*.nii.gz"))[:count]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for case in cases:
            upload_series(list(nifti_to_dicom_study(case, tmp).values()), dicomweb_url)
    return [c.name.split(".")[0] for c in cases]
