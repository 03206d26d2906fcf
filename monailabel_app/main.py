"""MONAI Label app serving the TokenSeg bundle: automatic and interactive segmentation, retraining, active learning.

    python -m monailabel.main start_server --app monailabel_app --studies <folder> \
        --conf models all --host 127.0.0.1 --port 8000

Models (``--conf models``: ``all``, the default, or a comma-separated list),
one module each in ``lib/configs`` as in MONAI Label's radiology app:
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

import contextvars
import importlib
import inspect
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

import torch
from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.endpoints.infer import ResultType  # at module level: FastAPI resolves the route's annotations here
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.class_utils import get_class_names
from monailabel.utils.others.generic import remove_file, strtobool

import tokenseg

import lib.configs
from lib.datastore import CheckedDatastore, check_image_id
from lib.dicomweb import PhaseStackDICOMwebDatastore
from lib.infers.tokenseg import NO_MODEL, TokenSegInfer, check_image
from lib.infers.tokenseg_deepedit import clicks_of
from lib.task import prepare_task

logger = logging.getLogger(__name__)

MODEL = "tokenseg"
INTERACTIVE_MODEL = "tokenseg_deepedit"
DICOMWEB_FILTER = {"Modality": "MR"}
MONAI_LABEL_DEFAULT_FILTER = {"Modality": "CT"}
SEG_TOOL = "itkimage2segimage"
# the file this request uploaded, set by the app's own infer route (``_install_request_checks``)
UPLOAD: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("tokenseg_upload", default=None)


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


def task_configs() -> dict[str, type[TaskConfig]]:
    """Each model's ``TaskConfig`` in ``lib/configs``, by its module's name (the radiology app's convention)."""
    configs = {}
    for path in get_class_names(lib.configs, "TaskConfig"):
        module, name = path.rsplit(".", 1)
        configs[module.rsplit(".", 1)[-1].lower()] = getattr(importlib.import_module(module), name)
    return dict(sorted(configs.items()))  # tokenseg before tokenseg_deepedit: the interactive one warm-starts from it


class TokenSegApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        configs = task_configs()
        self.models = served_models(conf.get("models", "all"), tuple(configs))
        source = Path(conf.get("bundle", Path(app_dir).resolve().parent / "bundle"))
        model_dir = Path(conf.get("model_dir", Path(app_dir) / "model"))
        self.task = prepare_task(source, model_dir / MODEL, conf, studies)
        self.train_defaults: dict[str, Any] = {
            "max_epochs": int(conf.get("epochs", 10)),
            "val_split": float(conf.get("val_split", 0.2)),
            "device": conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"),
            "multi_gpu": strtobool(conf.get("multi_gpu", "false")),
            "tracking": conf.get("tracking", "none").lower(),
        }
        self.configs: dict[str, TaskConfig] = {}
        for name in self.models:
            self.configs[name] = configs[name]()
            self.configs[name].init(name, str(model_dir), conf, None, task=self.task, train_defaults=self.train_defaults)
        self.uploads = Path(tempfile.mkdtemp(prefix="tokenseg-uploads-"))  # this server's uploads, nobody else's
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

    def init_infers(self) -> dict[str, InferTask]:
        self.infer_tasks = {name: config.infer() for name, config in self.configs.items()}
        return dict(self.infer_tasks)

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers = {name: config.trainer() for name, config in self.configs.items()}
        self.trainers = {name: trainer for name, trainer in trainers.items() if trainer}
        return dict(self.trainers)

    def init_strategies(self) -> dict[str, Strategy]:
        # random first: the clients' default Next Sample strategy. No other order has been shown to need
        # fewer labels than random here (README, "Active learning")
        strategies: dict[str, Strategy] = {"random": Random()}
        for config in self.configs.values():
            strategies.update(config.strategy() or {})
        return {**strategies, "first": First()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods: dict[str, ScoringMethod] = {}
        for config in self.configs.values():
            methods.update(config.scoring_method() or {})
        return methods

    def infer(self, request, datastore=None):
        if request.get("model") in self.infer_tasks:
            request = self.check_infer_request(request, datastore or self.datastore())
        return super().infer(request, datastore)

    def check_infer_request(self, request: dict, store: Datastore) -> dict:
        """HTTP 4xx for an image this request may not segment or cannot; the interactive model's clicks checked.

        The image must be a datastore image, the file this request uploaded, or
        the image of a MONAI Label session: any other path, even an existing
        file, is refused (MONAI Label would read it as it is).
        """
        image, model = request.get("image"), request["model"]
        if not isinstance(image, str):
            raise HTTPException(status_code=400, detail=f"image must be an image id, got {type(image).__name__}.")
        name, path = image, None
        if UPLOAD.get() is not None and image == UPLOAD.get():
            name, path = "uploaded image", image
        elif self._is_session(request):
            return request
        elif isinstance(store, PhaseStackDICOMwebDatastore):
            check_image_id(image)
            store.phases_of(image)  # any phase series of a study with all its phases (404/400 otherwise)
            if model != INTERACTIVE_MODEL:
                return request
            path = store.get_image_uri(image)  # the stacked phases, whose header the clicks are checked against
        elif image in store.list_images():  # a stored image, whatever characters its name has
            path = store.get_image_uri(image)
        else:
            check_image_id(image)
            raise HTTPException(status_code=404, detail=f"image {image!r} not found in the datastore.")
        if not isinstance(store, PhaseStackDICOMwebDatastore):
            check_image(name, path, self.task.spec["in_channels"])
        if model == INTERACTIVE_MODEL:
            return self._route_clicks(request, name, path)
        return request

    def _is_session(self, request: dict) -> bool:
        """A MONAI Label session of this server whose image is the request's (``/session/``, then ``session_id``)."""
        info = request.get("session")
        name = info.get("name") if isinstance(info, dict) else None
        if not isinstance(name, str):
            return False
        check_image_id(name, "session id")
        session = self.sessions().get_session(name, update_ts=False)
        return session is not None and session.image == request.get("image")

    def _route_clicks(self, request: dict, name: str, path: str) -> dict:
        """Check the interactive request's clicks (HTTP 400); without any, the automatic model answers it."""
        clicks = clicks_of(request, self.configs[INTERACTIVE_MODEL].labels, name, path)
        automatic = self.infer_tasks.get(MODEL)
        if not any(clicks.values()) and automatic is not None and automatic.model() is not None:
            return {**request, "model": MODEL}
        return request

    def batch_infer(self, request, datastore=None):
        if torch.cuda.device_count() < 2:  # MONAI Label 0.8.5 spreads images over "all" GPUs: a division by 0 without
            request = {**request, "multi_gpu": False}
        return super().batch_infer(request, datastore)

    def check_train_request(self, model: str) -> None:
        """HTTP 4xx, before any training process starts, for what cannot train."""
        if model not in self.trainers:
            raise HTTPException(
                status_code=404, detail=f"no trainer for model {model!r}; this app trains {list(self.trainers)}."
            )
        if not self.datastore().get_labeled_images():
            raise HTTPException(
                status_code=400, detail="no final labels yet: save at least one label before training."
            )

    def check_batch_infer_request(self, model: str, params: Optional[dict]) -> None:
        """HTTP 4xx, before the batch process starts: an unknown or untrained model, or masks aimed at final labels."""
        task = self.infer_tasks.get(model)
        if task is None:
            raise HTTPException(status_code=404, detail=f"no model {model!r}; this app serves {list(self.infer_tasks)}.")
        if isinstance(task, TokenSegInfer) and task.model() is None:
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
        """Routes of the app's own in front of three of MONAI Label's (0.8.5), each handing on to MONAI Label's.

        - ``POST /train/{model}`` and ``POST /batch/infer/{model}``: MONAI Label
          starts both in a background process (``AsyncTask``) and offers no hook
          in the server process before it does; a check in the task itself could
          only fail later, in the background, while the client has already been
          told 200. So bad requests are answered with a 4xx here first.
        - ``POST /infer/{model}`` with a file: MONAI Label stores an upload in
          the temp folder, where results and other clients' uploads also are,
          and hands it to the app as a path, marked no other way. Here the
          upload goes to this server's own folder under a random name and the
          request is marked (``UPLOAD``), so that no other file ever passes as one.
        """
        from monailabel.app import app as server
        from monailabel.endpoints.batch_infer import api_run as stock_batch_infer
        from monailabel.endpoints.batch_infer import run as run_batch
        from monailabel.endpoints.infer import run_inference
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

        async def infer(
            background_tasks: BackgroundTasks,
            model: str,
            image: str = "",
            session_id: str = "",
            params: str = Form("{}"),
            file: UploadFile = File(None),
            label: UploadFile = File(None),
            output: Optional[ResultType] = None,
            user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
        ):
            if not file:
                return run_inference(background_tasks, model, image, session_id, params, file, label, output)
            suffix = "".join(Path(file.filename).suffixes) if file.filename else ".nii.gz"
            upload = self.uploads / f"{uuid.uuid4().hex}{suffix}"
            with open(upload, "wb") as stored:
                shutil.copyfileobj(file.file, stored)
            background_tasks.add_task(remove_file, str(upload))
            marked = UPLOAD.set(str(upload))
            try:
                return run_inference(background_tasks, model, str(upload), session_id, params, None, label, output)
            finally:
                UPLOAD.reset(marked)

        for path, endpoint, summary in (
            ("/train/{model}", train_model, "Run Training Task for a model"),
            ("/batch/infer/{model}", batch_infer, "Run Batch Inference Task"),
            ("/infer/{model}", infer, "Run Inference for supported model"),
        ):
            server.router.routes.insert(0, APIRoute(path, endpoint, methods=["POST"], summary=summary))


def served_models(models: str, available: tuple[str, ...]) -> tuple[str, ...]:
    """``--conf models``: ``all`` or a comma-separated list of ``available``, in ``available``'s order."""
    chosen = available if models.strip() == "all" else tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in chosen if m not in available]
    if unknown or not chosen:
        raise ValueError(f"--conf models must be 'all' or a comma-separated list of {list(available)}; got {models!r}.")
    return tuple(m for m in available if m in chosen)
