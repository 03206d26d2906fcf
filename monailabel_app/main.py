"""MONAI Label app serving the TokenSeg bundle: automatic and interactive segmentation, retraining, active learning.

    python -m monailabel.main start_server --app monailabel_app --studies <folder> \
        --conf models all --host 127.0.0.1 --port 8000

Models (``--conf models``: ``all``, the default, or a comma-separated list):
``tokenseg``, the automatic model (type ``segmentation``), and
``tokenseg_deepedit``, the interactive one (type ``deepedit``: Slicer and OHIF
show their click tools; a request without clicks gets the automatic model's
answer). Both are the bundle's, with their own weights; training either
uses the same final labels and validation cases.

``--conf`` options (all optional; README.md has them all, with a new task from zero step by step):

- the task: ``labels`` (names to values, ``'{"tumour": 1}'``), ``in_channels``, ``spacing``,
  ``patch_size``, ``use_pretrained_model`` (default: the bundle's own task and weights);
- ``bundle`` (the bundle the task starts from) and ``model_dir`` (where the task's working
  bundle and its retrained ``models/model.pt`` live; ``bundle/`` itself is never written);
- defaults of a training request: ``epochs`` (10), ``val_split`` (0.2), ``val_interval`` (1),
  ``device``, ``multi_gpu``, ``tracking``.

With ``--studies http://HOST:PORT/dicom-web`` (a PACS, or the local Orthanc of
``python tools/orthanc.py``) images come from DICOMweb: each study holds one
MR series per contrast phase, stacked as the model's channels, and final labels
go back as DICOM SEG (``lib/dicomweb.py``). The series filter is MR here
(MONAI Label's default, ``{"Modality": "CT"}``, is replaced by it); any other
``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` is used as given. DICOM SEG needs
``itkimage2segimage`` (``pip install dcmqi``): it is looked up beside this
Python, so MONAI Label never tries to download it.
"""

from __future__ import annotations

import inspect
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
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

import tokenseg
from tokenseg.bundle_task import INTERACTIVE_WEIGHTS

from lib.datastore import CheckedDatastore, check_image_id
from lib.dicomweb import PhaseStackDICOMwebDatastore
from lib.infer import NO_MODEL, InteractiveModel, TrainedModel, UntrainedModel, check_image, clicks_of
from lib.scoring import SCORE_KEY, BoundaryTokenEntropyScoring
from lib.task import prepare_task
from lib.train import InteractiveTrainTask, TokenSegTrainTask

logger = logging.getLogger(__name__)

MODEL = "tokenseg"
INTERACTIVE_MODEL = "tokenseg_deepedit"
MODELS = (MODEL, INTERACTIVE_MODEL)
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


class TokenSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.models = served_models(conf.get("models", "all"))
        source = Path(conf.get("bundle", Path(app_dir).resolve().parent / "bundle"))
        model_dir = Path(conf.get("model_dir", Path(app_dir) / "model"))
        self.task = prepare_task(source, model_dir / MODEL, conf, studies)
        self.bundle_dir = str(self.task.bundle)
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
            label_values=self.task.spec["labels"].values(),
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
            num_phases=self.task.spec["in_channels"],
        )

    def _checkpoint(self, model: str) -> Path:
        return self.task.checkpoint if model == MODEL else self.task.bundle / "models" / INTERACTIVE_WEIGHTS

    def _interactive_labels(self) -> dict[str, int]:
        """The interactive model's labels: one click channel per class, the background's included."""
        return {"background": 0, **self.task.spec["labels"]}

    def _model_task(self, model: str) -> InferTask:
        labels = ", ".join(self.task.spec["labels"])
        if model == MODEL:
            if self.task.checkpoint.exists():
                return TrainedModel(self.bundle_dir, self.conf, self.task.start_weights)
            return UntrainedModel(
                self.task.spec["labels"], f"TokenSeg for {labels} (not trained yet)", self.task.start_weights
            )
        start = "the automatic model's weights (every layer that fits) when it has any, else from scratch"
        if self._checkpoint(model).exists():
            return InteractiveModel(self.bundle_dir, self.conf, start)
        return UntrainedModel(
            self._interactive_labels(),
            f"Interactive TokenSeg for {labels}: clicks refine it (not trained yet)",
            start,
            type="deepedit",
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {model: self._model_task(model) for model in self.models}

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if MODEL in self.models:
            trainers[MODEL] = TokenSegTrainTask(self.bundle_dir, self.conf, self.train_defaults, self.task.pretrained_path)
        if INTERACTIVE_MODEL in self.models:
            trainers[INTERACTIVE_MODEL] = InteractiveTrainTask(self.bundle_dir, self.conf, self.train_defaults)
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            SCORE_KEY: Epistemic(k=1, key=SCORE_KEY, desc="Unlabelled image whose boundaries TokenSeg is least sure of"),
            "random": Random(),
            "first": First(),
        }

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {SCORE_KEY: BoundaryTokenEntropyScoring(self.bundle_dir, self.train_defaults["device"])}

    def _current_model(self, model: str) -> InferTask:
        """The served model; the bundle task replaces the untrained one once training has written a checkpoint."""
        if isinstance(self._infers.get(model), UntrainedModel) and self._checkpoint(model).exists():
            self._infers[model] = self._model_task(model)
        return self._infers[model]

    def info(self):
        for model in self.models:
            self._current_model(model)
        return super().info()

    def infer(self, request, datastore=None):
        image, model = request.get("image"), request.get("model")
        if model in self.models and isinstance(image, str) and "session" not in request:
            store = datastore or self.datastore()
            if _is_upload(image):
                check_image("uploaded image", image, self.task.spec["in_channels"])
            elif isinstance(store, PhaseStackDICOMwebDatastore):
                check_image_id(image)
                store.phases_of(image)  # any phase series of a study with all its phases (404/400 otherwise)
            elif image in store.list_images():  # a stored image, whatever characters its name has
                check_image(image, store.get_image_uri(image), self.task.spec["in_channels"])
            else:
                check_image_id(image)
                raise HTTPException(status_code=404, detail=f"image {image!r} not found in the datastore.")
            if model == INTERACTIVE_MODEL:
                request = self._route_clicks(request, image, image if _is_upload(image) else store.get_image_uri(image))
        if request.get("model") in self.models:
            self._current_model(request["model"])
        return super().infer(request, datastore)

    def _route_clicks(self, request: dict, image_id: str, path: str) -> dict:
        """Check the interactive request's clicks (HTTP 400); without any, the automatic model answers it."""
        clicks = clicks_of(request, self._interactive_labels(), "uploaded image" if _is_upload(image_id) else image_id, path)
        automatic = self._current_model(MODEL) if MODEL in self.models else None
        if not any(clicks.values()) and isinstance(automatic, TrainedModel):
            return {**request, "model": MODEL}
        return request

    def batch_infer(self, request, datastore=None):
        if torch.cuda.device_count() < 2:  # MONAI Label 0.8.5 spreads images over "all" GPUs: a division by 0 without
            request = {**request, "multi_gpu": False}
        return super().batch_infer(request, datastore)

    def check_train_request(self, model: str) -> None:
        """HTTP 4xx, before any training process starts, for what cannot train."""
        if model not in self._trainers:
            raise HTTPException(
                status_code=404, detail=f"no trainer for model {model!r}; this app trains {list(self._trainers)}."
            )
        if not self.datastore().get_labeled_images():
            raise HTTPException(
                status_code=400, detail="no final labels yet: save at least one label before training."
            )

    def check_batch_infer_request(self, model: str, params: Optional[dict]) -> None:
        """HTTP 4xx, before the batch process starts: an unknown or untrained model, or masks aimed at final labels."""
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"no model {model!r}; this app serves {list(self._infers)}.")
        if isinstance(self._current_model(model), UntrainedModel):
            raise HTTPException(status_code=409, detail=NO_MODEL.format(model=model))
        tag = (params or {}).get("label_tag", DefaultLabelTag.ORIGINAL)
        if tag == DefaultLabelTag.FINAL:
            raise HTTPException(
                status_code=400, detail="batch inference does not write final labels: use label_tag 'original'."
            )
        check_image_id(str(tag), "label tag")

    def server_mode(self, mode: bool) -> None:
        super().server_mode(mode)
        if mode:
            self._install_request_checks()

    def _install_request_checks(self) -> None:
        """Answer bad training and batch-inference requests with a 4xx.

        MONAI Label (0.8.5) starts both in a background process (``AsyncTask``)
        and offers no hook in the server process before it does: a check in
        the task itself could only fail later, in the background, while the
        client has already been told 200. So a route in front of each stock
        route checks the request, then hands it to MONAI Label's own function.
        """
        from monailabel.app import app as server
        from monailabel.endpoints.batch_infer import api_run as stock_batch_infer
        from monailabel.endpoints.batch_infer import run as run_batch
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

        async def batch_infer(
            model: str,
            images: Optional[BatchInferImageType] = BatchInferImageType.IMAGES_ALL,
            params: Optional[dict] = inspect.signature(stock_batch_infer).parameters["params"].default,
            run_sync: Optional[bool] = False,
            user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
        ):
            self.check_batch_infer_request(model, params)
            return run_batch(model, images, params, run_sync)

        for path, endpoint, summary in (
            ("/train/{model}", train_model, "Run Training Task for a model"),
            ("/batch/infer/{model}", batch_infer, "Run Batch Inference Task"),
        ):
            server.router.routes.insert(0, APIRoute(path, endpoint, methods=["POST"], summary=summary))


def served_models(models: str) -> tuple[str, ...]:
    """``--conf models``: ``all`` or a comma-separated list of ``MODELS``."""
    chosen = MODELS if models.strip() == "all" else tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODELS]
    if unknown or not chosen:
        raise ValueError(f"--conf models must be 'all' or a comma-separated list of {list(MODELS)}; got {models!r}.")
    return chosen


def _is_upload(image: str) -> bool:
    """A file the infer endpoint itself stored from an upload (a NamedTemporaryFile in the temp folder).

    MONAI Label hands an uploaded image to ``infer`` as that file's path in ``image``, the same field
    that carries a datastore id, and marks it no other way: the temp folder and name are the only sign.
    """
    path = Path(image)
    return path.is_file() and path.parent == Path(tempfile.gettempdir()) and path.name.startswith("tmp")
