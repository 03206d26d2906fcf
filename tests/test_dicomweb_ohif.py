"""The TokenSeg app against a real DICOMweb server (Orthanc) and the OHIF viewer MONAI Label ships, offline.

Orthanc runs on 127.0.0.1 in its own temp folder (``tools/orthanc.py``), the
demo cases go in as MR studies (one series per contrast phase), the real
MONAI Label server reads them through DICOMweb, and headless Chromium opens
OHIF. Skipped only when the Debian packages (orthanc, orthanc-dicomweb,
chromium) are missing.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tokenseg.data.demo import ensure_demo_dataset
from tokenseg.data.dicom import LPS, nifti_to_dicom_study, upload_series
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
    with MonaiLabelServer(orthanc.dicomweb, folder / "model", folder / "server.log", env=env, models="all") as server:
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


BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--enable-unsafe-swiftshader",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian package chromium not installed")


@contextmanager
def chromium(app, tmp_path: Path):
    """A headless Chromium page whose MONAI Label panel points at ``app``; yields (page, the URLs it requested).

    On leaving, OHIF must have asked nothing of any other host but a web font (blocked: offline).
    """
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        # the panel's server setting (a cookie; its default is port 8000 of the page's host): this server's port
        browser.add_cookies([{"name": "MONAILABEL_SERVER_URL", "value": f"{app.url}/", "url": app.url}])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            yield page, requests
        finally:
            browser.close()
    outside = [u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))]
    assert all("fonts" in u for u in outside), outside


def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.float32)


def open_viewer_and_connect(page, app, orthanc: Orthanc, series: str, tmp_path: Path) -> None:
    """OHIF's MONAI Label mode on the study of ``series``, the slice drawn, the panel connected to ``app``."""
    study = uid(qido(orthanc.dicomweb, f"series?SeriesInstanceUID={series}")[0], "0020000D")
    page.goto(f"{app.url}/ohif/monai-label?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
    canvas = page.locator("canvas").first
    canvas.wait_for(timeout=90_000)
    shot = tmp_path / "ohif_viewport.png"
    deadline, variance = time.time() + 90, 0.0
    while time.time() < deadline and variance < 50:  # wait until the slice is drawn
        time.sleep(2)
        canvas.screenshot(path=str(shot))
        variance = float(_gray(shot).var())
    assert variance >= 50, f"viewport still blank (pixel variance {variance:.1f}); see {shot}"

    # the MONAI Label panel: its server field shows this server; connect, and it lists the models
    server_field = page.locator(f'input[value="{app.url}/"]')
    server_field.wait_for(timeout=60_000)
    box = server_field.bounding_box()
    page.mouse.click(box["x"] + box["width"] + 38, box["y"] + box["height"] / 2)  # the connect button
    page.locator('select option[value="tokenseg"]').first.wait_for(state="attached", timeout=60_000)


@needs_chromium
def test_ohif_study_list_viewer_and_monai_label_panel(orthanc, studies, app, tmp_path):
    with chromium(app, tmp_path) as (page, _):
        page.goto(f"{app.url}/ohif/", wait_until="domcontentloaded")
        for case in CASES:  # the study list shows the uploaded studies
            page.get_by_text(case).first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "ohif_study_list.png"))
        open_viewer_and_connect(page, app, orthanc, studies[CASES[0]][0], tmp_path)
        page.screenshot(path=str(tmp_path / "ohif_monai_label.png"))


ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # kept after the run (gitignored), for people to look at

SCROLL_TO_JS = """(world) => {
  // the active viewport brought to the plane through `world` (as a user scrolls to it); where `world` is on the page
  const {viewportGridService, cornerstoneViewportService} = window.services;
  const viewport = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getState().activeViewportId);
  const camera = viewport.getCamera();
  const normal = camera.viewPlaneNormal;
  const shift = [0, 1, 2].reduce((sum, i) => sum + (world[i] - camera.focalPoint[i]) * normal[i], 0);
  viewport.setCamera({focalPoint: camera.focalPoint.map((v, i) => v + shift * normal[i]),
                      position: camera.position.map((v, i) => v + shift * normal[i])});
  viewport.render();
  const [x, y] = viewport.worldToCanvas(world);
  const box = viewport.canvas.getBoundingClientRect();
  return [box.left + x, box.top + y];
}"""


def _colour(page, x: float, y: float, path: Path, radius: int = 3) -> float:
    """How far from gray the pixels within ``radius`` of page point (x, y) are (median of max - min over RGB)."""
    from PIL import Image

    page.screenshot(path=str(path))
    pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
    x, y = int(round(x)), int(round(y))
    patch = pixels[y - radius:y + radius + 1, x - radius:x + radius + 1]
    return float(np.median(patch.max(axis=-1) - patch.min(axis=-1)))


@needs_chromium
def test_ohif_point_prompt_on_the_interactive_model(orthanc, studies, app, demo, tmp_path):
    """A foreground click in OHIF's Point Prompts on ``tokenseg_deepedit``: the overlay appears under the click."""
    from scipy.ndimage import distance_transform_edt

    # the target: the voxel deepest inside the lesion of case 0, in patient (LPS) coordinates as OHIF's are
    label_file = nib.load(demo / "labelsTr" / f"{CASES[0]}.nii.gz")
    lesion = np.asarray(label_file.dataobj) > 0
    depth = distance_transform_edt(lesion, sampling=label_file.header.get_zooms()[:3])
    voxel = np.unravel_index(int(np.argmax(depth)), lesion.shape)
    world = LPS @ (label_file.affine @ [*voxel, 1.0])[:3]

    with chromium(app, tmp_path) as (page, _):
        open_viewer_and_connect(page, app, orthanc, studies[CASES[0]][0], tmp_path)
        page.locator("label.tab-label", has_text="Point Prompts").click()
        page.locator("select.selectBox").filter(has=page.locator('option[value="tokenseg_deepedit"]')).select_option(
            "tokenseg_deepedit"
        )
        page.locator("tr.clickable-row", has_text="lesion").click()
        x, y = page.evaluate(SCROLL_TO_JS, [float(w) for w in world])
        time.sleep(2)
        page.mouse.click(x, y)  # the probe: a foreground click for 'lesion'
        time.sleep(1)
        before = _colour(page, x, y, tmp_path / "ohif_click_placed.png")

        with page.expect_response(lambda r: "/infer/tokenseg_deepedit" in r.url, timeout=300_000) as answer:
            page.locator('button[title="Run PointPrompts"]').click()
        assert answer.value.status == 200, answer.value.text()
        sent = json.loads(re.search(r'\{.*"result_extension".*\}', answer.value.request.post_data).group(0))
        assert sent["background"] == [] and len(sent["lesion"]) == 1, sent
        assert np.abs(np.array(sent["lesion"][0]) - voxel).max() <= 1, (sent["lesion"], voxel)  # the voxel aimed at

        shot = ARTIFACTS / "ohif_point_prompt.png"
        ARTIFACTS.mkdir(exist_ok=True)
        deadline, after = time.time() + 60, before
        while time.time() < deadline and after < before + 30:  # the segmentation overlay is drawn
            time.sleep(2)
            after = _colour(page, x, y, shot)
        assert before < 10 and after >= before + 30, f"no overlay under the click ({before} -> {after}); see {shot}"
