"""The TokenSeg app against a real DICOMweb server (Orthanc) and the OHIF viewer MONAI Label ships, offline.

Orthanc runs on 127.0.0.1 in its own temp folder (``tools/orthanc.py``), the
demo cases go in as MR studies (one series per contrast phase), the real
MONAI Label server reads them through DICOMweb, and headless Chromium opens
OHIF. Skipped only when the Debian packages (orthanc, orthanc-dicomweb,
chromium) are missing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tokenseg.data.demo import ensure_demo_dataset
from tokenseg.data.dicom import nifti_to_dicom_study, upload_series
from tools.orthanc import Orthanc, orthanc_missing

from dicomweb_helpers import orthanc_instances, qido, uid
from monailabel_helpers import MonaiLabelServer, assert_rejected, client_for, wait_for_training

CASES = ["breast_000", "breast_001"]
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(bool(orthanc_missing()), reason=f"Orthanc unavailable: {orthanc_missing()}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(ensure_demo_dataset(tmp_path_factory.mktemp("data") / "demo"))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def studies(orthanc, demo, tmp_path_factory) -> dict[str, list[str]]:
    """case -> its phase series UIDs in channel order, uploaded to Orthanc."""
    work = tmp_path_factory.mktemp("dicom")
    return {
        case: upload_series(list(nifti_to_dicom_study(demo / "imagesTr" / f"{case}.nii.gz", work).values()),
                            orthanc.dicomweb)
        for case in CASES
    }


@pytest.fixture(scope="module")
def app(orthanc, studies, tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(folder / "cache")}
    with MonaiLabelServer(orthanc.dicomweb, folder / "model", folder / "server.log", env=env) as server:
        server.folder = folder
        yield server


def seg_series(orthanc: Orthanc) -> dict[str, str]:
    """SEG series UID -> the image series it refers to, through DICOMweb (QIDO + series metadata)."""
    refs = {}
    for entry in qido(orthanc.dicomweb, "series?Modality=SEG"):
        meta = qido(orthanc.dicomweb, f"studies/{uid(entry, '0020000D')}/series/{uid(entry)}/metadata")[0]
        refs[uid(entry)] = meta["00081115"]["Value"][0]["0020000E"]["Value"][0]
    return refs


def test_infer_seg_back_to_orthanc_and_retrain(orthanc, studies, app, demo, tmp_path):
    client = client_for(app, tmp_path)
    info = client.info()
    assert "tokenseg" in info["models"] and "tokenseg" in info["trainers"]
    anchor = studies[CASES[0]][0]
    assert client.next_sample("first", {})["id"] in {s[0] for s in studies.values()}  # one image per study

    # inference on the DICOM series (its three phases stacked) == inference on the original NIfTI
    mask, _ = client.infer("tokenseg", anchor, {})
    from_nifti, _ = client.infer("tokenseg", "", {}, file=str(demo / "imagesTr" / f"{CASES[0]}.nii.gz"))
    result, reference = nib.load(mask), nib.load(from_nifti)
    assert result.shape == (96, 96, 48)
    np.testing.assert_allclose(result.affine, nib.load(demo / "imagesTr" / f"{CASES[0]}.nii.gz").affine, atol=1e-4)
    voxels = int((np.asarray(result.dataobj) > 0).sum())
    assert voxels > 0 and voxels == int((np.asarray(reference.dataobj) > 0).sum())
    # OHIF sends the series on screen: any phase of the study gives the same mask
    other, _ = client.infer("tokenseg", studies[CASES[0]][2], {})
    assert int((np.asarray(nib.load(other).dataobj) > 0).sum()) == voxels

    # the annotator accepts it: a DICOM SEG referring to the source series appears in Orthanc
    before = set(seg_series(orthanc))
    client.save_label(anchor, mask, tag="final")
    new = {s: ref for s, ref in seg_series(orthanc).items() if s not in before}
    assert list(new.values()) == [anchor], new
    seg_uid = next(iter(new))
    study = uid(qido(orthanc.dicomweb, f"series?SeriesInstanceUID={seg_uid}")[0], "0020000D")
    seg = pydicom.dcmread(_wado_instance(orthanc, study, seg_uid, tmp_path))
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    assert int(frames.astype(bool).sum()) == voxels  # the SEG holds exactly the mask's voxels

    # a second case labelled with its ground truth, then one epoch of retraining from labels stored in Orthanc
    client.save_label(studies[CASES[1]][0], str(demo / "labelsTr" / f"{CASES[1]}.nii.gz"), tag="final")
    assert set(seg_series(orthanc).values()) == {studies[c][0] for c in CASES}
    checkpoint = app.folder / "model" / "tokenseg" / "models" / "model.pt"
    stamp = checkpoint.stat().st_mtime
    client.train_start("tokenseg", {"max_epochs": 1, "val_split": 0.5})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    assert any("val_mean_dice" in line for line in status.get("details", [])), status
    assert checkpoint.stat().st_mtime > stamp


def _wado_instance(orthanc: Orthanc, study: str, series: str, tmp_path: Path) -> str:
    from dicomweb_client.api import DICOMwebClient

    instance = DICOMwebClient(url=orthanc.dicomweb).retrieve_series(study, series)[0]
    path = tmp_path / f"{series}.dcm"
    instance.save_as(str(path))
    return str(path)


def test_bad_input_rejected_and_nothing_lost(orthanc, studies, app, demo, tmp_path):
    client = client_for(app, tmp_path)
    stored = orthanc_instances(orthanc.url)
    work = tmp_path / "dicom"

    # not DICOM: refused by the upload library and by the app's upload endpoint
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.dcm").write_text("not a DICOM file")
    with pytest.raises(ValueError, match="notes.dcm: not a DICOM file"):
        upload_series([junk], orthanc.dicomweb)
    assert_rejected(lambda: client.upload_image(str(junk / "notes.dcm"), "notes"), "400", "not a DICOM file")

    # a series with a missing slice: refused before upload ...
    folders = list(nifti_to_dicom_study(demo / "imagesTr" / "breast_002.nii.gz", work).values())
    (sorted(folders[0].iterdir())[20]).unlink()
    with pytest.raises(ValueError, match="missing slices"):
        upload_series(folders, orthanc.dicomweb)
    assert orthanc_instances(orthanc.url) == stored
    # ... and, when another tool stored it anyway, refused by the app at inference
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url=orthanc.dicomweb).store_instances(
        [pydicom.dcmread(str(p)) for f in folders for p in sorted(f.iterdir())]
    )
    gapped = str(pydicom.dcmread(str(next(folders[0].iterdir()))).SeriesInstanceUID)
    assert_rejected(lambda: client.infer("tokenseg", gapped, {}), "400", "missing slices")
    stored = orthanc_instances(orthanc.url)

    # a DICOM SEG whose geometry does not match its series: the stored SEG of case 0 with another pixel spacing
    refs = {ref: s for s, ref in seg_series(orthanc).items()}
    anchor = studies[CASES[0]][0]
    seg_uid = refs.get(anchor)
    if seg_uid is None:  # run alone: store a label first
        client.save_label(anchor, str(demo / "labelsTr" / f"{CASES[0]}.nii.gz"), tag="final")
        seg_uid = {ref: s for s, ref in seg_series(orthanc).items()}[anchor]
        stored = orthanc_instances(orthanc.url)
    study = uid(qido(orthanc.dicomweb, f"series?SeriesInstanceUID={seg_uid}")[0], "0020000D")
    seg = pydicom.dcmread(_wado_instance(orthanc, study, seg_uid, tmp_path))
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [3.0, 3.0]
    seg.SeriesInstanceUID, seg.SOPInstanceUID = generate_uid(), generate_uid()
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    bad_seg = tmp_path / "bad_seg.dcm"
    seg.save_as(str(bad_seg))
    assert_rejected(lambda: client.save_label(anchor, str(bad_seg), tag="final"), "400", "does not match")
    wrong_shape = tmp_path / "wrong_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.uint8), np.eye(4)), wrong_shape)
    assert_rejected(lambda: client.save_label(anchor, str(wrong_shape), tag="final"), "400", "spatial shape")

    assert orthanc_instances(orthanc.url) == stored  # nothing deleted, replaced or added


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian package chromium not installed")
def test_ohif_study_list_viewer_and_monai_label_panel(orthanc, studies, app, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    from PIL import Image

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--enable-unsafe-swiftshader",
             "--no-first-run", "--disable-component-update", "--disable-sync"]
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=flags,
            viewport={"width": 1280, "height": 900},
        )
        # the panel's server setting (a cookie; its default is port 8000 of the page's host): this server's port
        browser.add_cookies([{"name": "MONAILABEL_SERVER_URL", "value": f"{app.url}/", "url": app.url}])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{app.url}/ohif/", wait_until="domcontentloaded")
            for case in CASES:  # the study list shows the uploaded studies
                page.get_by_text(case).first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "ohif_study_list.png"))

            study = uid(qido(orthanc.dicomweb, f"series?SeriesInstanceUID={studies[CASES[0]][0]}")[0], "0020000D")
            page.goto(f"{app.url}/ohif/monai-label?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
            canvas = page.locator("canvas").first
            canvas.wait_for(timeout=90_000)
            shot = tmp_path / "ohif_viewport.png"
            deadline, variance = time.time() + 90, 0.0
            while time.time() < deadline and variance < 50:  # wait until the slice is drawn
                time.sleep(2)
                canvas.screenshot(path=str(shot))
                variance = float(np.asarray(Image.open(shot).convert("L"), np.float32).var())
            assert variance >= 50, f"viewport still blank (pixel variance {variance:.1f}); see {shot}"

            # the MONAI Label panel: its server field shows this server; connect, and it lists the model
            server_field = page.locator(f'input[value="{app.url}/"]')
            server_field.wait_for(timeout=60_000)
            box = server_field.bounding_box()
            page.mouse.click(box["x"] + box["width"] + 38, box["y"] + box["height"] / 2)  # the connect button
            page.locator('select option[value="tokenseg"]').first.wait_for(state="attached", timeout=60_000)
            page.screenshot(path=str(tmp_path / "ohif_monai_label.png"))
        finally:
            browser.close()
    outside = [u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))]
    assert all("fonts" in u for u in outside), outside  # OHIF's only outside request is a web font (blocked: offline)
