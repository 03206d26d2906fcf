"""MONAI Label app serving the TokenSeg bundle: segmentation, retraining, active learning.

    python -m monailabel.main start_server --app monailabel_app --studies <folder> \
        --conf models tokenseg --host 127.0.0.1 --port 8000

``--conf`` options (all optional):

- ``models``: ``tokenseg`` (the only model this app serves).
- ``bundle``: the bundle to serve (default: ``bundle/`` beside this app).
- ``model_dir``: where the app keeps its working copy of the bundle, whose
  ``models/model.pt`` retraining replaces (default: ``model/`` in this app).
  The shipped bundle itself is never written.
- ``epochs`` (10), ``val_split`` (0.2), ``val_interval`` (1), ``device`` (``cuda`` when available, else
  ``cpu``), ``multi_gpu`` (``true``: ``torchrun`` over the visible GPUs),
  ``tracking`` (``none`` or ``mlflow``): defaults of a training request.

With ``--studies http://HOST:PORT/dicom-web`` (a PACS, or the local Orthanc of
``python -m tokenseg.orthanc``) images come from DICOMweb: each study holds one
MR series per contrast phase, stacked as the model's channels, and final labels
go back as DICOM SEG (``lib/dicomweb.py``). The series filter is MR here
(MONAI Label's default, ``{"Modality": "CT"}``, is replaced by it); any other
``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` is used as given. DICOM SEG needs
``itkimage2segimage`` (``pip install dcmqi``): it is looked up beside this
Python, so MONAI Label never tries to download it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from fastapi import Depends, HTTPException
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.post import Restored
from monailabel.utils.others.generic import strtobool

import tokenseg

from lib.datastore import CheckedDatastore, check_image_id
from lib.dicomweb import PhaseStackDICOMwebDatastore
from lib.scoring import SCORE_KEY, BoundaryTokenEntropyScoring
from lib.train import TokenSegTrainTask

logger = logging.getLogger(__name__)

MODEL = "tokenseg"
DICOMWEB_FILTER = {"Modality": "MR"}
MONAI_LABEL_DEFAULT_FILTER = {"Modality": "CT"}
SEG_TOOL = "itkimage2segimage"


def find_seg_tool() -> str:
    """Put dcmqi's ``itkimage2segimage`` on PATH (the venv's bin holds it after ``pip install dcmqi``), or fail
    clearly: without it MONAI Label downloads dcmqi at start-up, which fails offline."""
    here = str(Path(sys.executable).parent)
    if here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
    tool = shutil.which(SEG_TOOL)
    if tool is None:
        raise RuntimeError(f"{SEG_TOOL} not found on PATH nor in {here}: pip install dcmqi (DICOM SEG support).")
    return tool


def prepare_bundle(source: Path, working_copy: Path) -> Path:
    """Keep the app's working copy of ``source`` current: configs and docs from the source on every start,
    the checkpoint only when the working copy has none (so retrained weights survive restarts)."""
    if not (source / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{source} is not a TokenSeg bundle (no configs/inference.json).")
    (working_copy / "models").mkdir(parents=True, exist_ok=True)
    for part in ("configs", "docs"):
        shutil.copytree(source / part, working_copy / part, dirs_exist_ok=True)
    shutil.copy2(source / "LICENSE", working_copy / "LICENSE")
    checkpoint = working_copy / "models" / "model.pt"
    if not checkpoint.exists() and (source / "models" / "model.pt").exists():
        shutil.copy2(source / "models" / "model.pt", checkpoint)
    return working_copy


class TokenSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        models = conf.get("models", MODEL)
        if models not in (MODEL, "all"):
            raise ValueError(f"this app serves the '{MODEL}' model only; got --conf models {models}.")
        source = Path(conf.get("bundle", Path(app_dir).resolve().parent / "bundle"))
        model_dir = Path(conf.get("model_dir", Path(app_dir) / "model"))
        self.bundle_dir = str(prepare_bundle(source, model_dir / MODEL))
        self.train_defaults: dict[str, Any] = {
            "max_epochs": int(conf.get("epochs", 10)),
            "val_split": float(conf.get("val_split", 0.2)),
            "device": conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"),
            "multi_gpu": strtobool(conf.get("multi_gpu", "false")),
            "tracking": conf.get("tracking", "none").lower(),
        }
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="TokenSeg",
            description="TokenSeg: boundary-aware sparse-token 3D segmentation, with retraining and active learning",
            version=tokenseg.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return self._init_dicomweb()
        return CheckedDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _init_dicomweb(self) -> Datastore:
        find_seg_tool()
        self.studies = self.studies.rstrip("/").strip()
        search_filter = settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER
        if search_filter == MONAI_LABEL_DEFAULT_FILTER:  # MONAI Label's default (CT) hides every MR series
            search_filter = DICOMWEB_FILTER
        logger.info(f"DICOMweb datastore {self.studies}, series filter {search_filter}")
        client = DICOMwebClientX(
            url=self.studies,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return PhaseStackDICOMwebDatastore(
            client,
            search_filter,
            cache_path=cache or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            num_phases=self._in_channels(),
        )

    def _in_channels(self) -> int:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(Path(self.bundle_dir) / "configs" / "inference.json"))
        return int(parser.get_parsed_content("in_channels"))

    def init_infers(self) -> dict[str, InferTask]:
        task = BundleInferTask(self.bundle_dir, self.conf)
        if not task.is_valid():
            raise RuntimeError(f"{self.bundle_dir} cannot serve inference: no models/model.pt (train the bundle first).")
        # the mask must go back to the image's own grid, or a DICOM SEG made from it is silently wrong
        if not isinstance(task.post_transforms()[-1], Restored):
            raise RuntimeError("the inference post-transforms must end with Restored(keys='pred', ref_image='image').")
        return {MODEL: task}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL: TokenSegTrainTask(self.bundle_dir, self.conf, self.train_defaults)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            SCORE_KEY: Epistemic(k=1, key=SCORE_KEY, desc="Unlabelled image whose boundaries TokenSeg is least sure of"),
            "random": Random(),
            "first": First(),
        }

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {SCORE_KEY: BoundaryTokenEntropyScoring(self.bundle_dir, self.train_defaults["device"])}

    def infer(self, request, datastore=None):
        image = request.get("image")
        if isinstance(image, str) and "session" not in request and not _is_upload(image):
            store = datastore or self.datastore()
            if not isinstance(store, PhaseStackDICOMwebDatastore) and image in store.list_images():
                return super().infer(request, datastore)  # a stored image, whatever characters its name has
            check_image_id(image)
            if isinstance(store, PhaseStackDICOMwebDatastore):
                store.phases_of(image)  # any phase series of a study with all its phases (404/400 otherwise)
            elif image not in store.list_images():
                raise HTTPException(status_code=404, detail=f"image {image!r} not found in the datastore.")
        return super().infer(request, datastore)

    def check_train_request(self, model: str) -> None:
        """HTTP 4xx, before any training process starts, for what cannot train."""
        if model not in self._trainers:
            raise HTTPException(status_code=404, detail=f"no trainer for model {model!r}; this app trains {MODEL!r}.")
        if not self.datastore().get_labeled_images():
            raise HTTPException(
                status_code=400, detail="no final labels yet: save at least one label before training."
            )

    def server_mode(self, mode: bool) -> None:
        super().server_mode(mode)
        if mode:
            self._install_train_check()

    def _install_train_check(self) -> None:
        """Put ``check_train_request`` in front of MONAI Label's ``POST /train/{model}``, which would
        otherwise accept the request and fail later in its background process."""
        from monailabel.app import app as server
        from monailabel.endpoints.train import run_model

        async def train_model(
            model: str,
            params: Optional[dict] = None,
            run_sync: Optional[bool] = False,
            enqueue: Optional[bool] = False,
            user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
        ):
            self.check_train_request(model)
            return run_model(model, params, run_sync, enqueue)

        route = APIRoute("/train/{model}", train_model, methods=["POST"], summary="Run Training Task for a model")
        server.router.routes.insert(0, route)


def _is_upload(image: str) -> bool:
    """A file the infer endpoint itself stored from an upload (a NamedTemporaryFile in the temp folder)."""
    path = Path(image)
    return path.is_file() and path.parent == Path(tempfile.gettempdir()) and path.name.startswith("tmp")
